#!/usr/bin/env python3
"""Generate the negative conformance vectors in conformance/negative/ from the positive ones.

Each vector is a positive bitstream broken in one documented way; conformance/negative/manifest.json lists,
per vector, the base vector, what was changed, and the violations ``nnc.check`` must report (code, unit index,
byte offset where meaningful, syntax path). The expectations are written here by hand from the spec; the
script refuses to write a vector the checker does not flag as expected.

Usage: python tools/make_negative_vectors.py [--out conformance/negative]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nnc  # noqa: E402
import nnc.bitstream as B  # noqa: E402

NDU = "NNR_NDU.nnr_compressed_data_unit_header"
TINY = "vectors/tiny_qp-32_dq.nnc"            # STR MPS TPL + 5 small NDUs (profile 1, DQ)
EPS = "generated/nnc_block_scan1_nodq.nnc"    # 200x70 weight, scan_order 1: 24 entry points
SEQ1 = "vectors/tca_seq/001.nnc"              # incremental update: parent_node_id_present_flag = 1


def load(rel: str) -> bytes:
    return (ROOT / "conformance" / rel).read_bytes()


def units(data: bytes) -> list[bytes]:
    return [bytes(u.data) for u in B.parse(data)]


def set_size(unit: bytes, size: int) -> bytes:
    """Rewrite nnr_unit_size keeping the size field's form."""
    if unit[0] & 0x80:
        return struct.pack(">I", 0x80000000 | size) + unit[4:]
    return struct.pack(">H", size) + unit[2:]


def rewrite_ndu(data: bytes, index: int, **changes) -> bytes:
    """Re-serialise NDU ``index`` with header fields changed (payload kept)."""
    p = B.parse(data)
    u = p[index]
    body = dataclasses.replace(u.body, **changes)
    new = B.write_unit(body, context=u.context, payload=bytes(u.payload))
    return bytes(p.data[:u.offset]) + new + bytes(p.data[u.end:])


def offsets(data: bytes) -> list[int]:
    return [u.offset for u in B.parse(data)]


def flip_to_parent_type_3(data: bytes, index: int) -> bytes:
    """Set parent_node_id_type of NDU ``index`` to 3 (located by trying each bit position of the header)."""
    p = B.parse(data)
    u = p[index]
    for bit in range((u.offset + 3) * 8, (u.offset + u.header_size) * 8 - 1):
        b = bytearray(data)
        for k in (bit, bit + 1):
            b[k >> 3] |= 0x80 >> (k & 7)
        if b == bytearray(data):
            continue
        q = B.parse(bytes(b), strict=False)
        errs = [e for e in q.errors if "reserved parent_node_id_type 3" in str(e)]
        if errs and len(q) == len(p) and q[index - 1].ok:
            return bytes(b)
    raise RuntimeError("parent_node_id_type not found")


def cases():
    t = load(TINY)
    tu = units(t)                       # 0 STR, 1 MPS, 2 TPL, 3..7 NDUs
    to = offsets(t)
    out = []

    def add(cid, base, data, description, expected):
        out.append((cid, base, data, description, expected))

    tpl = set_size(tu[2], len(tu[2]) + 1) + b"\x00"
    add("tpl_unit_size_too_large", TINY, b"".join(tu[:2] + [tpl] + tu[3:]),
        "NNR_TPL nnr_unit_size 6 -> 7 with one extra byte: the unit's syntax ends before nnr_unit_size",
        [dict(code="UNIT_SIZE_MISMATCH", unit_index=2, byte_offset=to[2] + 6, syntax_path="NNR_TPL.nnr_topology_unit")])

    ndu = set_size(tu[3], len(tu[3]) + 1) + b"\x00"
    add("ndu_unit_size_too_large", TINY, b"".join(tu[:3] + [ndu] + tu[4:]),
        "first NDU: nnr_unit_size + 1 with a 0x00 byte appended to the CABAC payload (payload not fully consumed)",
        [dict(code="PAYLOAD_SIZE_MISMATCH", unit_index=3, syntax_path="NNR_NDU.payload")])

    last = set_size(tu[7][:-1], len(tu[7]) - 1)
    add("ndu_payload_truncated", TINY, b"".join(tu[:7] + [last]),
        "last NDU: CABAC payload shortened by one byte and nnr_unit_size adjusted (the decoder runs out of data)",
        [dict(code="PAYLOAD_TRUNCATED", unit_index=7)])

    add("file_truncated", TINY, t[:-5], "the file is cut 5 bytes before its end (incomplete last unit)",
        [dict(code="TRUNCATED_UNIT", unit_index=7, byte_offset=to[7], syntax_path="nnr_unit_size")])

    add("trailing_garbage", TINY, t + b"\xff\xff\xff", "three 0xFF bytes appended after the last unit",
        [dict(code="TRAILING_BYTES", unit_index=8, byte_offset=len(t), syntax_path="nnr_unit_size")])

    add("reserved_unit_type", TINY, b"".join(tu[:3] + [b"\x00\x04\x24\x00"] + tu[3:]),
        "a 4-byte unit of reserved nnr_unit_type 9 inserted after the TPL (the NDUs after it are still checked)",
        [dict(code="RESERVED_UNIT_TYPE", unit_index=3, byte_offset=to[3] + 2,
              syntax_path="nnr_unit_header.nnr_unit_type")])

    b = bytearray(t)
    b[to[3] + 3] = (7 << 3) | (b[to[3] + 3] & 7)
    add("reserved_payload_type", TINY, bytes(b), "first NDU: nnr_compressed_data_unit_payload_type 1 -> 7",
        [dict(code="RESERVED_PAYLOAD_TYPE", unit_index=3, byte_offset=to[3] + 3,
              syntax_path=f"{NDU}.nnr_compressed_data_unit_payload_type")])

    add("impossible_dimensions", TINY, rewrite_ndu(t, 7, tensor_dimensions=[1 << 20, 1 << 20]),
        "last NDU ([1, 7], 25 payload bytes) claims dimensions [1048576, 1048576]",
        [dict(code="DIMENSIONS_EXCEED_PAYLOAD", unit_index=7, syntax_path=f"{NDU}.tensor_dimensions")])

    add("zero_dimension", TINY, rewrite_ndu(t, 7, tensor_dimensions=[0, 7]),
        "last NDU: tensor_dimensions [1, 7] -> [0, 7]",
        [dict(code="DIMENSIONS_INVALID", unit_index=7, syntax_path=f"{NDU}.tensor_dimensions")])

    add("reserved_scan_order", TINY, rewrite_ndu(t, 7, scan_order=5), "last NDU ([1, 7]): scan_order 0 -> 5",
        [dict(code="RESERVED_SCAN_ORDER", unit_index=7, syntax_path=f"{NDU}.scan_order")])

    add("mps_after_ndu", TINY, b"".join([tu[0], tu[2], tu[3], tu[1]] + tu[4:]),
        "the NNR_MPS moved after the first NDU (order STR, TPL, NDU, MPS, NDU...)",
        [dict(code="MPS_MISSING", unit_index=1, syntax_path="NNR_TPL.nnr_unit_header.nnr_unit_type"),
         dict(code="MPS_MISSING", unit_index=2, syntax_path="NNR_NDU.nnr_unit_header.nnr_unit_type"),
         dict(code="MPS_MISPLACED", unit_index=3, byte_offset=4 + 6 + len(tu[3]),
              syntax_path="NNR_MPS.nnr_unit_header.nnr_unit_type")])

    add("duplicate_mps", TINY, b"".join(tu[:2] + [tu[1]] + tu[2:]), "the NNR_MPS is repeated (two MPS units)",
        [dict(code="MPS_DUPLICATE", unit_index=2, byte_offset=12, syntax_path="NNR_MPS.nnr_unit_header.nnr_unit_type")])

    add("missing_start_unit", TINY, b"".join(tu[1:]), "the NNR_STR unit is removed",
        [dict(code="STR_NOT_FIRST", unit_index=0, byte_offset=0, syntax_path="NNR_MPS.nnr_unit_header.nnr_unit_type")])

    add("duplicate_tensor_name", TINY, t + tu[3], "the first NDU ('one') is appended again at the end",
        [dict(code="DUPLICATE_TENSOR_NAME", unit_index=8, syntax_path=f"{NDU}.topology_elem_id")])

    b = bytearray(t)
    b[3] = 7
    add("reserved_profile", TINY, bytes(b), "general_profile_idc 1 -> 7",
        [dict(code="RESERVED_PROFILE", unit_index=0, byte_offset=3,
              syntax_path="NNR_STR.nnr_start_unit_header.general_profile_idc")])

    b = bytearray(t)
    b[to[1] + 4] |= 0x01
    add("mps_reserved_bits", TINY, bytes(b), "NNR_MPS nnr_reserved_zero_2bits = 1",
        [dict(code="RESERVED_BITS_NONZERO", unit_index=1, byte_offset=to[1] + 4,
              syntax_path="NNR_MPS.nnr_model_parameter_set_unit_payload.nnr_reserved_zero_2bits")])

    b = bytearray(t)
    b[to[2] + 3] = 9
    add("tpl_reserved_storage_format", TINY, bytes(b), "NNR_TPL topology_storage_format 0 -> 9",
        [dict(code="RESERVED_VALUE", unit_index=2, byte_offset=to[2] + 3,
              syntax_path="NNR_TPL.nnr_topology_unit.topology_storage_format")])

    add("unit_size_too_small", TINY, b"".join(tu[:2] + [set_size(tu[2], 2)] + tu[3:]),
        "NNR_TPL nnr_unit_size 6 -> 2 (smaller than the size field plus the type byte)",
        [dict(code="UNIT_SIZE_INVALID", unit_index=2, byte_offset=to[2], syntax_path="nnr_unit_size")])

    ctx = B.parse(t).context
    raw = B.ndu_unit(B.NduHeaderSpec(payload_type=B.PayloadType.NNR_PT_RAW_FLOAT, name="raw", shape=(3,),
                                     parameter_id=5), struct.pack("<3f", 1.0, 2.0, 3.0), context=ctx)
    raw = set_size(raw[:-4], len(raw) - 4)
    add("raw_float_payload_short", TINY, t + raw,
        "an NNR_PT_RAW_FLOAT NDU for dimensions [3] (12 bytes) carrying only 8 payload bytes",
        [dict(code="PAYLOAD_SIZE_MISMATCH", unit_index=8, syntax_path="NNR_NDU.raw_float32_parameter")])

    e = load(EPS)
    eh = B.parse(e)[3].body
    eps = list(eh.cabac_entry_point_list)
    eps1 = eps[:1] + [eps[1]._replace(bit_offset=eps[1].bit_offset + 1)] + eps[2:]
    add("entry_point_bit_offset", EPS, rewrite_ndu(e, 3, cabac_entry_point_list=eps1),
        "NDU 'b.weight' (scan_order 1): cabac_entry_point_list[1].bit_offset + 1",
        [dict(code="ENTRY_POINT_MISMATCH", unit_index=3, syntax_path=f"{NDU}.cabac_entry_point_list[1].bit_offset")])
    eps0 = [eps[0]._replace(value=(eps[0].value + 1) & 0xFF)] + eps[1:]
    add("entry_point_value", EPS, rewrite_ndu(e, 3, cabac_entry_point_list=eps0),
        "NDU 'b.weight' (scan_order 1): cabac_entry_point_list[0].value + 1",
        [dict(code="ENTRY_POINT_MISMATCH", unit_index=3, syntax_path=f"{NDU}.cabac_entry_point_list[0].value")])
    add("entry_point_count", EPS, rewrite_ndu(e, 3, scan_order=2, cabac_entry_point_list=eps[:12]),
        "NDU 'b.weight' coded with scan_order 1 but signalling scan_order 2 (12 entry points): the payload no "
        "longer decodes to the unit size",
        [dict(code="PAYLOAD_SIZE_MISMATCH", unit_index=3, syntax_path="NNR_NDU.payload")])

    s = load(SEQ1)
    add("reserved_parent_node_id_type", SEQ1, flip_to_parent_type_3(s, 3),
        "incremental NDU: parent_node_id_type 0 -> 3",
        [dict(code="RESERVED_PARENT_NODE_ID_TYPE", unit_index=3, syntax_path=f"{NDU}.parent_node_id_type")])

    b = bytearray(t)
    b[to[1] + 4] |= 0x01
    add("multiple_violations", TINY, b"".join([bytes(b[:to[3]]), b"\x00\x04\x24\x00", bytes(b[to[3]:]), b"\xff"]),
        "MPS reserved bits set, a reserved unit type inserted, one trailing byte: all three are reported",
        [dict(code="RESERVED_BITS_NONZERO", unit_index=1, syntax_path=
              "NNR_MPS.nnr_model_parameter_set_unit_payload.nnr_reserved_zero_2bits"),
         dict(code="RESERVED_UNIT_TYPE", unit_index=3, syntax_path="nnr_unit_header.nnr_unit_type"),
         dict(code="TRAILING_BYTES", unit_index=9, syntax_path="nnr_unit_size")])
    return out


def matches(v, exp) -> bool:
    return all(getattr(v, k) == val for k, val in exp.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "conformance" / "negative"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    entries, bad = [], []
    for cid, base, data, desc, expected in cases():
        rep = nnc.check(data)
        missing = [e for e in expected if not any(matches(v, e) for v in rep.errors)]
        if rep.ok or missing:
            bad.append(f"{cid}: expected {missing or expected}, got:\n{rep.to_text()}")
            continue
        (out / f"{cid}.nnc").write_bytes(data)
        entries.append({"id": cid, "bitstream": f"{cid}.nnc", "base": base, "description": desc,
                        "bitstream_sha256": hashlib.sha256(data).hexdigest(), "expected": expected})
    if bad:
        print("\n\n".join(bad), file=sys.stderr)
        return 1
    manifest = {"generator": "tools/make_negative_vectors.py",
                "rule": "nnc.check(bitstream) must be not ok and must report every listed violation "
                        "(all listed keys equal); other violations may follow from the same damage",
                "cases": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(entries)} negative vectors in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
