"""Federated-learning transport codec on NNC bitstreams.

* :class:`ClientCodec` / :class:`ServerCodec`: per-client error accumulation, top-k / threshold / ternary
  sparsification, QP control, bidirectional coding with a server residual, update caching for clients
  that missed rounds, exact byte accounting, rejection of corrupt uploads (:class:`RejectedUpdateError`).
* :mod:`nnc.fl.compressors` (QSGD, TernGrad, signSGD, top-k/DGC, PowerSGD, Atomo on NNC),
  :mod:`nnc.fl.sparsify`, :mod:`nnc.fl.distill` (CFD's soft-label codec), :mod:`nnc.fl.clustering` and
  :mod:`nnc.fl.clustered` (CFL), :mod:`nnc.fl.codecs` (the message-codec protocol),
  :mod:`nnc.fl.selection` (client selection policies).

This package is the engine-agnostic core: it never imports Flower nor the simulations. Beside it:

* :mod:`nnc.fl.flower`: Flower client Mods and strategies (needs ``pip install "flwr[simulation]"``);
* :mod:`nnc.fl.sim`: numpy MLP, offline data, in-process loops (``nnc.fl.sim.simulate`` ...).
"""
from . import sparsify
from .codecs import MessageCodec, MessageDecoder, MessageEncoder, UpdateCodec
from .rounds import RoundPolicy
from .selection import select_clients
from .transport import (ClientCodec, DownlinkConfig, DownlinkMessage, DuplicateUploadError, RejectedUpdateError,
                        RoundRecord, ServerCodec, UplinkConfig, UplinkMessage, UploadBinding, bind_upload,
                        validate_tensors)

__all__ = ["ClientCodec", "ServerCodec", "UplinkConfig", "DownlinkConfig", "UplinkMessage", "DownlinkMessage",
           "RoundRecord", "RejectedUpdateError", "validate_tensors", "sparsify", "presets", "MessageEncoder",
           "MessageDecoder", "MessageCodec", "UpdateCodec", "select_clients", "RoundPolicy", "DuplicateUploadError",
           "UploadBinding", "bind_upload"]


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
