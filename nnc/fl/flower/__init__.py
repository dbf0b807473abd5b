"""Flower 1.42 (Message API) adapters of the nnc FL layer; needs ``pip install "flwr[simulation]"``.

Thin wrappers only: record conversion (:mod:`.records`), client Mods and strategies for FedAvg
(:mod:`.fedavg`: :func:`nnc_mod`, :class:`NNCFedAvg`), compressed federated distillation (:mod:`.cfd`:
:func:`cfd_mod`, :class:`CFDFedAvg`) and clustered FL (:mod:`.cfl`: :func:`cfl_mod`,
:class:`ClusteredFedAvg`). The protocols themselves are the engine-agnostic :mod:`nnc.fl`; the strategies
take the server model and the client selection as arguments. Nothing here imports :mod:`nnc.fl.sim`.
"""
from .cfd import CFDFedAvg, cfd_mod
from .cfl import ClusteredFedAvg, cfl_mod
from .fedavg import (STYPE_STREAM, STYPE_UPDATE, NNCFedAvg, nnc_mod, partition_query, query_partitions,
                     wait_for_nodes)
from .records import bytes_array, from_arrayrecord, to_arrayrecord

__all__ = ["nnc_mod", "NNCFedAvg", "STYPE_STREAM", "STYPE_UPDATE", "partition_query", "query_partitions",
           "wait_for_nodes", "to_arrayrecord", "from_arrayrecord", "bytes_array", "cfd_mod", "CFDFedAvg",
           "cfl_mod", "ClusteredFedAvg"]
