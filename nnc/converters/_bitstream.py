"""Unit-level surgery on an NNC bitstream: drop NNR_TPL units a decoder does not understand.

The units are found by the bitstream parser (:func:`nnc.bitstream.iter_units`, the one unit walker), which reads
every unit's size and header; a unit whose body nnc cannot parse is still kept or dropped whole (its errors do not
matter here), but a unit whose size field is unusable (truncated, too small, running past the end) raises the
parser's :class:`~nnc.errors.BitstreamError`, located by unit index and byte offset. NNCodec 2.1.3 refuses
topology storage formats 1, 2, 5 and 6 (it raises NotImplementedError) and reads ``topology_data`` of the other
formats as a NUL-terminated string; removing those units leaves a bitstream it decodes, with every tensor
unchanged (the NDUs name their tensors themselves).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..bitstream import NNRUnitType, Unit, iter_units

#: storage formats NNCodec 2.1.3 cannot decode
REFERENCE_UNSUPPORTED_TOPOLOGY_FORMATS = (1, 2, 5, 6)


def framed_units(bitstream) -> Iterator[Unit]:
    """The units of ``bitstream`` as the parser finds them (``strict=False``: a unit's syntax errors are left in
    ``unit.errors``); a unit whose size field cannot be used raises its framing error."""
    for unit in iter_units(bitstream, strict=False):
        if unit.data is None:  # no usable nnr_unit_size: the parser cannot go on either
            raise unit.errors[0]
        yield unit


def _storage_format(unit: Unit) -> int:
    """topology_storage_format of an NNR_TPL unit: its first byte after the unit header (read from the parsed
    body when the parser could read it)."""
    if unit.body is not None:
        return int(unit.body.topology_storage_format)
    h = unit.header
    at = (4 if h.nnr_unit_size_flag else 2) + 1 + (1 if h.partial_data_counter_present_flag else 0)
    return int(unit.data[at]) if at < len(unit.data) else -1


def topology_unit_formats(bitstream: bytes) -> list[int]:
    """topology_storage_format of every NNR_TPL unit (in order)."""
    return [_storage_format(u) for u in framed_units(bitstream) if u.nnr_unit_type == NNRUnitType.NNR_TPL]


def drop_topology_units(bitstream: bytes,
                        storage_formats: Iterable[int] | None = REFERENCE_UNSUPPORTED_TOPOLOGY_FORMATS) -> bytes:
    """A copy of ``bitstream`` without its NNR_TPL units of the given storage formats (``None``: all of them)."""
    fmts = None if storage_formats is None else set(int(f) for f in storage_formats)
    parts = []
    for unit in framed_units(bitstream):
        if unit.nnr_unit_type == NNRUnitType.NNR_TPL and (fmts is None or _storage_format(unit) in fmts):
            continue
        parts.append(bytes(unit.data))
    return b"".join(parts)
