"""Property tests: random NDU headers survive write -> parse unchanged."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnc.bitstream as B
from nnc.bitstream import Context, EntryPoint, NduHeader, PayloadType
from nnc.errors import BitstreamError

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=0, max_size=12)


def rows_minus1(rows: int, scan_order: int) -> int:
    return math.ceil(rows / (4 << scan_order)) - 1 if rows else -1


@st.composite
def ndu_case(draw):
    profile = draw(st.sampled_from([0, 1]))
    indexed = draw(st.integers(0, 1))
    parent_sig = draw(st.integers(0, 1)) if profile == 1 else 0
    ctx = Context(general_profile_idc=profile, mps_topology_indexed_reference_flag=indexed,
                  mps_parent_signalling_enabled_flag=parent_sig)
    pt = draw(st.sampled_from(list(PayloadType)))
    multi = 1 if pt == PayloadType.NNR_PT_BLOCK else 0
    f = {}
    f["nnr_compressed_data_unit_payload_type"] = int(pt)
    f["nnr_multiple_topology_elements_present_flag"] = multi
    fmt_present = draw(st.integers(0, 1))
    f["nnr_decompressed_data_format_present_flag"] = fmt_present
    f["input_parameters_present_flag"] = 1
    if multi:
        n = draw(st.integers(2, 6))
        f["count_topology_elements_minus2"] = n - 2
        if indexed:
            f["topology_elem_id_index_list"] = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
        else:
            f["topology_elem_id_list"] = draw(st.lists(names, min_size=n, max_size=n))
    elif indexed:
        f["topology_elem_id_index"] = draw(st.integers(0, 10**6))
    else:
        f["topology_elem_id"] = draw(names | st.sampled_from(["w_G", "w_H", "x.weight"]))
    if profile == 1:
        node = draw(st.integers(0, 1))
        f["node_id_present_flag"] = node
        if node:
            f["device_id"] = draw(st.integers(0, 1000))
            f["parameter_id"] = draw(st.integers(0, 10**5))
            f["put_node_depth"] = draw(st.integers(0, 100))
        if parent_sig:
            pp = draw(st.integers(0, 1))
            f["parent_node_id_present_flag"] = pp
            if pp:
                ptype = draw(st.integers(0, 2))
                f["parent_node_id_type"] = ptype
                f["temporal_context_modeling_flag"] = draw(st.integers(0, 1))
                if ptype == 0:
                    f["parent_device_id"] = draw(st.integers(0, 1000))
                    if not node:
                        f["parameter_id"] = draw(st.integers(0, 10**5))
                        f["put_node_depth"] = draw(st.integers(0, 100))
                elif ptype == 1:
                    f["parent_node_payload_sha256"] = draw(st.integers(0, 2**256 - 1))
                else:
                    f["parent_node_payload_sha512"] = draw(st.integers(0, 2**512 - 1))

    def codebook():
        vals = sorted(draw(st.sets(st.integers(-3000, 3000), min_size=1, max_size=20)))
        z = draw(st.integers(0, len(vals) - 1))
        return B.Codebook.from_values(vals, z, draw(st.integers(0, 15)))

    cb = 0
    if pt in (PayloadType.NNR_PT_FLOAT, PayloadType.NNR_PT_BLOCK):
        cb = draw(st.integers(0, 1))
        f["codebook_present_flag"] = cb
        if cb:
            f["codebook"] = codebook()
    dq = 0
    if pt != PayloadType.NNR_PT_RAW_FLOAT:
        dq = draw(st.integers(0, 1))
        f["dq_flag"] = dq
    if fmt_present:
        f["nnr_decompressed_data_format"] = draw(st.integers(0, 127))
    f["tensor_dimensions_flag"] = 1
    culf = draw(st.integers(0, 1))
    f["cabac_unary_length_flag"] = culf
    cpt = draw(st.integers(0, 15))
    f["compressed_parameter_types"] = cpt
    if cpt & 1:
        f["decomposition_rank"] = draw(st.integers(0, 70))
        f["g_number_of_rows"] = draw(st.integers(1, 70))
    big = 6 if pt == PayloadType.NNR_PT_RAW_FLOAT else 200  # raw payloads hold every element
    dims = draw(st.lists(st.integers(0, big), min_size=0, max_size=4))
    f["count_tensor_dimensions"] = len(dims)
    f["tensor_dimensions"] = dims
    if culf:
        f["cabac_unary_length_minus1"] = draw(st.integers(0, 255))
    if pt == PayloadType.NNR_PT_BLOCK and cpt & 1 and cb:
        f["codebook_dc"] = codebook()
    if len(dims) > 1:
        if profile == 1:
            f["first_tensor_dimension_shift"] = draw(st.integers(0, 5))
        so = draw(st.integers(0, 4))
        f["scan_order"] = so
        if so > 0:
            if cpt & 1:
                g, h = f["g_number_of_rows"], f["decomposition_rank"]
                if pt == PayloadType.NNR_PT_BLOCK:
                    count = rows_minus1(g, so) + rows_minus1(h, so)
                else:
                    count = rows_minus1(g if str(f.get("topology_elem_id")).endswith("_G") else h, so)
            else:
                count = rows_minus1(dims[0], so)
            count = max(0, count)
            eps = []
            for _ in range(count):
                eps.append(EntryPoint(draw(st.integers(0, 255)), draw(st.integers(0, 7)) if dq else 0,
                                      draw(st.integers(0, 10**7))))
            f["cabac_entry_point_list"] = eps
    return ctx, NduHeader(**f), draw(st.binary(max_size=40))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ndu_case())
def test_random_ndu_headers_roundtrip(case):
    ctx, h, payload = case
    if h.nnr_compressed_data_unit_payload_type == PayloadType.NNR_PT_RAW_FLOAT:
        payload = bytes(4 * math.prod(h.tensor_dimensions))
    data = B.write_unit(h, context=ctx, payload=payload)
    p = B.parse(data, context=ctx)
    u = p[0]
    assert u.body == h
    assert bytes(u.payload) == payload
    assert u.header_size + len(payload) == u.size == len(data)
    assert B.write_unit(u) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_random_bytes_never_crash(blob):
    for prefix in (b"", bytes.fromhex("00040201" "0008068100400080")):
        data = prefix + blob
        try:
            B.parse(data)
        except BitstreamError:
            pass
        except NotImplementedError:
            pass
        q = B.parse(data, strict=False)
        assert all(getattr(e, "unit_index", None) is not None for e in q.errors)
