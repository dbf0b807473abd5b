"""Unit-level surgery on an NNC bitstream: drop NNR_TPL units a decoder does not understand.

Every NNR unit starts with its total size (``nnr_unit_size_flag`` u(1), then u(15) or u(31)), so a unit can be
skipped without parsing it. NNCodec 2.1.3 refuses topology storage formats 1, 2, 5 and 6 (it raises
NotImplementedError) and reads ``topology_data`` of the other formats as a NUL-terminated string; removing those
units leaves a bitstream it decodes, with every tensor unchanged (the NDUs name their tensors themselves).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import BitstreamError

NNR_TPL = 3
#: storage formats NNCodec 2.1.3 cannot decode
REFERENCE_UNSUPPORTED_TOPOLOGY_FORMATS = (1, 2, 5, 6)


def iter_units(bitstream: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, size, nnr_unit_type) for each unit."""
    b = memoryview(bytes(bitstream))
    pos = 0
    while pos < len(b):
        if len(b) - pos < 3:
            raise BitstreamError("truncated unit header", byte_offset=pos)
        if b[pos] & 0x80:
            if len(b) - pos < 5:
                raise BitstreamError("truncated unit header", byte_offset=pos)
            size = int.from_bytes(b[pos:pos + 4], "big") & 0x7FFFFFFF
            hdr = pos + 4
        else:
            size = int.from_bytes(b[pos:pos + 2], "big")
            hdr = pos + 2
        if size < hdr - pos + 1 or pos + size > len(b):
            raise BitstreamError(f"nnr_unit_size {size} does not fit the bitstream", byte_offset=pos)
        yield pos, size, b[hdr] >> 2
        pos += size


def topology_unit_formats(bitstream: bytes) -> list[int]:
    """topology_storage_format of every NNR_TPL unit (in order)."""
    out = []
    for pos, size, typ in iter_units(bitstream):
        if typ == NNR_TPL:
            hdr = pos + (4 if bitstream[pos] & 0x80 else 2)
            extra = 1 if bitstream[hdr] & 0x01 else 0  # partial_data_counter
            out.append(bitstream[hdr + 1 + extra])
    return out


def drop_topology_units(bitstream: bytes,
                        storage_formats: Iterable[int] | None = REFERENCE_UNSUPPORTED_TOPOLOGY_FORMATS) -> bytes:
    """A copy of ``bitstream`` without its NNR_TPL units of the given storage formats (``None``: all of them)."""
    fmts = None if storage_formats is None else set(int(f) for f in storage_formats)
    parts = []
    for pos, size, typ in iter_units(bitstream):
        if typ == NNR_TPL:
            hdr = pos + (4 if bitstream[pos] & 0x80 else 2)
            extra = 1 if bitstream[hdr] & 0x01 else 0
            if fmts is None or bitstream[hdr + 1 + extra] in fmts:
                continue
        parts.append(bytes(bitstream[pos:pos + size]))
    return b"".join(parts)
