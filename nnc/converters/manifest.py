"""What a bitstream's topology says about its tensors: the names it must carry and their source dtypes.

Used by ``nnc decode``/``info``/``check`` to notice a bitstream that lost tensors (a file cut at a unit
boundary parses cleanly) and to report figures in the source dtype (bfloat16 is coded as float32).

Two topologies list the coded tensors:

* the JSON record of :class:`~nnc.converters._common.TensorRecord` with ``extra["tensors"]`` (the coded names
  in bitstream order), which ``nnc encode`` writes by default;
* an ONNX graph (NNR_TPL_ONNX): its placeholders name every coded tensor (needs the ``onnx`` package).

Any other topology (the empty NNR_TPL unit NNCodec writes, ``nnc.encode`` without a topology,
``nnc encode --reference-layout``) lists nothing: completeness cannot be verified.
"""
from __future__ import annotations

from typing import Iterable

from ..errors import ModelFormatError
from ..topology import Topology, TopologyCompressionFormat, TopologyStorageFormat
from . import _onnx
from ._common import TensorRecord

__all__ = ["expected_names", "source_dtypes", "with_name_list", "reference_topology", "ITEMSIZE"]

NAMES_KEY = "tensors"

#: bytes per element of each dtype name the converters record
ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4,
            "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}


def _onnx_dtypes(topology: Topology) -> dict[str, str] | None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    return _onnx.tensor_dtypes(topology)


def expected_names(topology: Topology | None) -> list[str] | None:
    """The tensor names the bitstream must carry, or ``None`` when its topology does not list them."""
    if topology is None:
        return None
    if topology.storage_format == TopologyStorageFormat.NNR_TPL_ONNX:
        dtypes = _onnx_dtypes(topology)
        return None if dtypes is None else list(dtypes)
    record = TensorRecord.from_topology(topology)
    if record is None:
        return None
    names = record.extra.get(NAMES_KEY)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def source_dtypes(topology: Topology | None) -> dict[str, str]:
    """Name -> original dtype for the tensors whose dtype the topology records (others are as coded)."""
    if topology is None:
        return {}
    try:
        if topology.storage_format == TopologyStorageFormat.NNR_TPL_ONNX:
            return _onnx_dtypes(topology) or {}
        record = TensorRecord.from_topology(topology)
    except ModelFormatError:
        return {}
    return dict(record.dtypes) if record is not None else {}


def with_name_list(topology: Topology | None, names: Iterable[str], source_format: str) -> Topology:
    """``topology`` with the coded tensor names added (JSON record); an ONNX graph already lists them."""
    if topology is not None and topology.storage_format == TopologyStorageFormat.NNR_TPL_ONNX:
        return topology
    record = TensorRecord.from_topology(topology) if topology is not None else None
    if record is None:
        record = TensorRecord(source_format="pytorch" if source_format == "pytorch" else "numpy")
    record.extra[NAMES_KEY] = list(names)
    return record.to_topology()


def reference_topology(source_format: str) -> Topology:
    """The empty NNR_TPL unit NNCodec 2.1.3 writes (storage format 3 for PyTorch sources, else 0)."""
    fmt = TopologyStorageFormat.NNR_TPL_PYT if source_format == "pytorch" else TopologyStorageFormat.NNR_TPL_UNREC
    return Topology(int(fmt), int(TopologyCompressionFormat.NNR_PT_RAW), b"")
