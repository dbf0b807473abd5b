"""Topology carried in an NNR_TPL unit.

The standard's ``topology_storage_format`` says how to read ``topology_data``; nnc treats the data as opaque
bytes here and leaves their interpretation to the converters (``nnc.converters``).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Topology", "TopologyStorageFormat", "TopologyCompressionFormat"]


class TopologyStorageFormat(IntEnum):
    NNR_TPL_UNREC = 0
    NNR_TPL_NNEF = 1
    NNR_TPL_ONNX = 2
    NNR_TPL_PYT = 3
    NNR_TPL_TEF = 4
    NNR_TPL_PRUN = 5
    NNR_TPL_REFLIST = 6


class TopologyCompressionFormat(IntEnum):
    NNR_PT_RAW = 0
    NNR_DFL = 1


@dataclass(frozen=True)
class Topology:
    """Contents of one NNR_TPL unit.

    ``data`` is the ``topology_data`` as written in the unit (without the terminating NUL of the ``st``
    descriptor). With ``compression_format == NNR_DFL`` it is deflate-compressed.
    """

    storage_format: int = TopologyStorageFormat.NNR_TPL_UNREC
    compression_format: int = TopologyCompressionFormat.NNR_PT_RAW
    data: bytes = b""
