"""Byzantine-robust aggregation from Flower's own strategies, composed with nnc's coding.

:class:`~nnc.fl.flower.NNCFedAvg` decodes, validates and norm-bounds the uploads; with
``aggregator=<a Flower strategy>`` the *aggregation* of the decoded updates is that strategy's own
``aggregate_train`` (``FedMedian``, ``FedTrimmedAvg``, ``Krum``, ``MultiKrum``, ``Bulyan`` from
``flwr.serverapp.strategy``), and nnc codes the result for the downlink. The updates are handed over as
deltas: every rule Flower offers here (coordinate-wise median and trimmed mean, Krum distances, Bulyan) is
translation-invariant, so aggregating ``model + delta`` or ``delta`` selects the same thing.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
from flwr.app import Message, MessageType, Metadata, MetricRecord, RecordDict

from ...errors import UpdateStateError
from .records import from_arrayrecord, to_arrayrecord

__all__ = ["flower_combine", "as_reply"]


def as_reply(content: RecordDict, src_node_id: int) -> Message:
    """A train reply carrying ``content`` from ``src_node_id`` (what a strategy's ``aggregate_train`` reads)."""
    md = Metadata(run_id=0, message_id="", src_node_id=int(src_node_id), dst_node_id=0, reply_to_message_id="",
                  group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=md)


def flower_combine(strategy, server_round: int) -> Callable[[Mapping], dict]:
    """``combine(items) -> delta`` for :meth:`nnc.fl.ServerCodec.aggregate`: runs ``strategy.aggregate_train``
    on the decoded updates ``{client: (delta, num_examples)}`` (in the given order)."""

    def combine(items: Mapping) -> dict[str, np.ndarray]:
        replies = []
        for i, (_, (delta, n)) in enumerate(dict(items).items()):
            content = RecordDict({strategy.arrayrecord_key: to_arrayrecord(delta),
                                  "metrics": MetricRecord({strategy.weighted_by_key: int(n)})})
            replies.append(as_reply(content, i + 1))
        try:
            arrays, _ = strategy.aggregate_train(server_round, replies)
        except Exception as e:  # noqa: BLE001 - Flower's AggregationError and the like: the round decides
            raise UpdateStateError(f"{type(strategy).__name__} could not aggregate: {e}") from e
        if arrays is None:
            raise UpdateStateError(f"{type(strategy).__name__} returned no aggregate")
        return {k: np.asarray(v, np.float32) for k, v in from_arrayrecord(arrays).items()}

    return combine
