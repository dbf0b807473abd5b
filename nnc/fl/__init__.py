"""Federated-learning transport codec on NNC bitstreams.

* :class:`ClientCodec` / :class:`ServerCodec`: per-client error accumulation, top-k / threshold / ternary
  sparsification, QP control, bidirectional coding with a server residual, update caching for clients
  that missed rounds, exact byte accounting, rejection of corrupt uploads (:class:`RejectedUpdateError`).
* :func:`simulate`: an in-process numpy FL loop using the same objects.
* :mod:`nnc.fl.flower`: a Flower client Mod and a FedAvg strategy (needs ``pip install "flwr[simulation]"``).
"""
from . import sparsify
from .simulate import SimResult, dirichlet_partition, simulate
from .transport import (ClientCodec, DownlinkConfig, DownlinkMessage, RejectedUpdateError, RoundRecord,
                        ServerCodec, UplinkConfig, UplinkMessage, validate_tensors)

__all__ = ["ClientCodec", "ServerCodec", "UplinkConfig", "DownlinkConfig", "UplinkMessage", "DownlinkMessage",
           "RoundRecord", "RejectedUpdateError", "validate_tensors", "sparsify", "simulate", "SimResult",
           "dirichlet_partition", "presets"]


def presets(qp: int = -36, sparsity: float = 0.01, down_qp: int = -40, down_sparsity: float | None = 0.05
            ) -> dict[str, tuple[UplinkConfig, DownlinkConfig]]:
    """The four benchmark methods as ``name -> (uplink, downlink)``."""
    f32 = DownlinkConfig(mode="float32")
    return {
        "fedavg_f32": (UplinkConfig(mode="float32", error_feedback=False), f32),
        "fedavg_nnc": (UplinkConfig(qp=qp, error_feedback=False, tca=True), f32),
        "nnc_sparse_ef": (UplinkConfig(qp_mode="ternary", sparsity=sparsity, error_feedback=True), f32),
        "nnc_bidir_cache": (UplinkConfig(qp_mode="ternary", sparsity=sparsity, error_feedback=True),
                            DownlinkConfig(mode="nnc", qp=down_qp, sparsity=down_sparsity, cache=True)),
    }
