"""Declarations of every NNR syntax structure (spec §1.2–§1.11).

Each class below is the one and only description of its structure: the reader, the writer and the
Markdown tables are all derived from the item list given to :func:`syntax`. Field names are the
specification's syntax element names.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import BitstreamError, LimitExceededError, UnsupportedFeatureError
from ..topology import Topology
from .enums import (CompressedParameterTypes, NNRUnitType, ParentNodeIdType, PayloadType,
                    QuantizationMethodFlags, TopologyCompressionFormat, TopologyStorageFormat)
from .syntax import (FLT, IE, ST, UE, RestBytes, Align, Array, Descriptor, Expr, Fail, Field, I, If, Loop, Scope, Sub,
                     U, as_int64, over_limit, register_names, syntax)

__all__ = [
    "UnitHeader", "StartUnit", "ModelParameterSet", "LayerParameterSet", "TopologyUnit", "QuantizationUnit",
    "NduHeader", "Codebook", "EntryPoint", "SparsificationPerformanceMap", "PruningPerformanceMap",
    "UnificationPerformanceMap", "DecompositionPerformanceMap", "entry_point_count", "BODY_CLASSES",
    "ALL_STRUCTURES",
]

register_names(**{m.name: m for e in (NNRUnitType, PayloadType, CompressedParameterTypes, QuantizationMethodFlags,
                                      ParentNodeIdType, TopologyStorageFormat, TopologyCompressionFormat)
                  for m in e})


# ---------------------------------------------------------------------------------------------------
# §1.2 unit size and unit header
# ---------------------------------------------------------------------------------------------------
UNIT_SIZE_ITEMS = [
    Field("nnr_unit_size_flag", U(1)),
    Field("nnr_unit_size", U(15), when="nnr_unit_size_flag == 0",
          note="whole unit in bytes, size field included"),
    Field("nnr_unit_size", U(31), when="nnr_unit_size_flag == 1"),
]
UNIT_HEADER_ITEMS = [
    Field("nnr_unit_type", U(6)),
    Field("independently_decodable_flag", U(1), default=1),
    Field("partial_data_counter_present_flag", U(1), default=0),
    Field("partial_data_counter", U(8), when="partial_data_counter_present_flag == 1"),
]


@syntax("nnr_unit_size() + nnr_unit_header()", path="nnr_unit_header", items=UNIT_SIZE_ITEMS + UNIT_HEADER_ITEMS,
        title="common to every unit (§1.2); followed by the type-specific header and payload")
class UnitHeader:
    @property
    def type_name(self) -> str:
        return _type_name(self.nnr_unit_type)


def _type_name(t) -> str:
    try:
        return NNRUnitType(t).name
    except ValueError:
        return f"reserved({t})"


# ---------------------------------------------------------------------------------------------------
# §1.4 NNR_STR
# ---------------------------------------------------------------------------------------------------
@syntax("nnr_start_unit_header()", [Field("general_profile_idc", U(8))], title="NNR_STR (§1.4); empty payload")
class StartUnit:
    UNIT_TYPE = NNRUnitType.NNR_STR


# ---------------------------------------------------------------------------------------------------
# §1.5.1 performance maps
# ---------------------------------------------------------------------------------------------------
@syntax("sparsification_performance_map()", [
    Field("spm_count_thresholds", U(8)),
    Loop("entries", "spm_count_thresholds - 1", [
        Field("sparsification_threshold", FLT()),
        Field("non_zero_ratio", FLT()),
        Field("spm_nn_accuracy", FLT()),
        Field("spm_count_classes", U(8)),
        Field("spm_class_bitmask", UE(7)),
        Array("spm_nn_class_accuracy", FLT(), "spm_count_classes"),
    ], note="runs count − 1 times (§6 item 6)"),
])
class SparsificationPerformanceMap:
    pass


@syntax("pruning_performance_map()", [
    Field("ppm_count_pruning_ratios", U(8)),
    Loop("entries", "ppm_count_pruning_ratios - 1", [
        Field("pruning_ratio", FLT()),
        Field("ppm_nn_accuracy", FLT()),
        Field("ppm_count_classes", U(8)),
        Field("ppm_class_bitmask", UE(7)),
        Array("ppm_nn_class_accuracy", FLT(), "ppm_count_classes"),
    ], note="runs count − 1 times"),
])
class PruningPerformanceMap:
    pass


@syntax("unification_performance_map()", [
    Field("upm_count_thresholds", U(8)),
    Loop("entries", "upm_count_thresholds - 1", [
        Field("count_reshaped_tensor_dimension", UE(1)),
        Array("reshaped_tensor_dimensions", UE(7), "count_reshaped_tensor_dimension - 1"),
        Align(),
        Field("count_super_block_dimension", U(8)),
        Array("super_block_dimensions", U(8), "count_super_block_dimension - 1"),
        Field("count_block_dimension", U(8)),
        Array("block_dimensions", U(8), "count_block_dimension - 1"),
        Field("unification_threshold", FLT()),
        Field("upm_nn_accuracy", FLT()),
        Field("upm_count_classes", U(8)),
        Field("upm_class_bitmask", UE(7)),
        Array("upm_nn_class_accuracy", FLT(), "upm_class_bitmask",
              note="bound is upm_class_bitmask, as in the reference (§6 item 6)"),
    ], note="runs count − 1 times"),
])
class UnificationPerformanceMap:
    pass


@syntax("decomposition_performance_map()", [
    Field("dpm_count_thresholds", U(8)),
    Loop("entries", "dpm_count_thresholds - 1", [
        Field("mse_threshold", FLT()),
        Field("dpm_nn_accuracy", FLT()),
        Field("nn_reduction_ratio", FLT()),
        Field("dpm_count_classes", U(16)),
        Array("dpm_nn_class_accuracy", FLT(), "dpm_count_classes"),
    ], note="runs count − 1 times"),
])
class DecompositionPerformanceMap:
    pass


# ---------------------------------------------------------------------------------------------------
# §1.5 NNR_MPS
# ---------------------------------------------------------------------------------------------------
_QUANT = "{p}_quantization_method_flags & (NNR_QSU | NNR_QCB) != 0"


@syntax("nnr_model_parameter_set_unit_payload()", [
    Field("topology_carriage_flag", U(1)),
    Field("mps_sparsification_flag", U(1)),
    Field("mps_pruning_flag", U(1)),
    Field("mps_unification_flag", U(1)),
    Field("mps_decomposition_performance_map_flag", U(1)),
    Field("mps_quantization_method_flags", U(3)),
    Field("mps_topology_indexed_reference_flag", U(1)),
    If("general_profile_idc == 1", [
        Field("base_model_id_present_flag", U(1)),
        Field("validation_set_performance_present_flag", U(1)),
        Field("metric_type_performance_map_valid_flag", U(1)),
        Field("mps_parent_signalling_enabled_flag", U(1)),
        Field("nnr_pre_flag", U(1), when="mps_parent_signalling_enabled_flag == 1"),
        Field("nnr_reserved_zero_1bit", U(1), when="mps_parent_signalling_enabled_flag == 0", default=0),
        Field("nnr_reserved_zero_2bits", U(2), default=0),
        Field("base_model_id", ST(), when="base_model_id_present_flag == 1"),
        Field("performance_metric_type", ST(),
              when="validation_set_performance_present_flag == 1 or metric_type_performance_map_valid_flag == 1"),
    ], orelse=[
        Field("nnr_reserved_zero_7bits", U(7), default=0),
    ]),
    If(_QUANT.format(p="mps"), [
        Field("mps_qp_density", U(3)),
        Field("mps_quantization_parameter", I(13)),
    ]),
    Sub("sparsification_performance_map", SparsificationPerformanceMap, when="mps_sparsification_flag == 1"),
    Sub("pruning_performance_map", PruningPerformanceMap, when="mps_pruning_flag == 1"),
    Sub("unification_performance_map", UnificationPerformanceMap, when="mps_unification_flag == 1"),
    Sub("decomposition_performance_map", DecompositionPerformanceMap,
        when="mps_decomposition_performance_map_flag == 1"),
    Field("validation_set_performance", FLT(),
          when="general_profile_idc == 1 and validation_set_performance_present_flag == 1"),
    Align(),
], title="NNR_MPS (§1.5); the unit header part is empty")
class ModelParameterSet:
    UNIT_TYPE = NNRUnitType.NNR_MPS


# ---------------------------------------------------------------------------------------------------
# §1.6 NNR_LPS
# ---------------------------------------------------------------------------------------------------
@syntax("nnr_layer_parameter_set_unit_header() + _payload()", path="nnr_layer_parameter_set_unit", items=[
    Field("lps_self_contained_flag", U(1)),
    Field("nnr_reserved_zero_7bits", U(7), default=0),
    Field("nnr_reserved_zero_1_bits", U(1), default=0),
    Field("lps_sparsification_flag", U(1)),
    Field("lps_pruning_flag", U(1)),
    Field("lps_unification_flag", U(1)),
    Field("lps_quantization_method_flags", U(3)),
    Field("nnr_reserved_zero_1bit", U(1), default=0),
    If(_QUANT.format(p="lps"), [
        Field("lps_qp_density", U(3)),
        Field("lps_quantization_parameter", I(13)),
    ]),
    Sub("sparsification_performance_map", SparsificationPerformanceMap, when="lps_sparsification_flag == 1"),
    Sub("pruning_performance_map", PruningPerformanceMap, when="lps_pruning_flag == 1"),
    Sub("unification_performance_map", UnificationPerformanceMap, when="lps_unification_flag == 1"),
    Align(),
], title="NNR_LPS (§1.6)")
class LayerParameterSet:
    UNIT_TYPE = NNRUnitType.NNR_LPS


# ---------------------------------------------------------------------------------------------------
# §1.9.2 topology_elements_ids_list(indexed) — shared by NNR_TPL (REFLIST) and NNR_NDU
# ---------------------------------------------------------------------------------------------------
def _topology_elements_ids_list(indexed: str) -> list:
    return [
        Field("count_topology_elements_minus2", UE(7)),
        If(f"{indexed} == 0", [
            Align(),
            Array("topology_elem_id_list", ST(), "count_topology_elements_minus2 + 2"),
        ], orelse=[
            Array("topology_elem_id_index_list", UE(7), "count_topology_elements_minus2 + 2"),
            Align(),
        ]),
    ]


# ---------------------------------------------------------------------------------------------------
# §1.7 NNR_TPL
# ---------------------------------------------------------------------------------------------------
@syntax("nnr_topology_unit_header() + _payload()", path="nnr_topology_unit", items=[
    Field("topology_storage_format", U(8)),
    Field("topology_compression_format", U(8)),
    Fail("topology_storage_format == NNR_TPL_PRUN",
         "nnr_pruning_topology_container (NNR_TPL_PRUN) is not implemented", UnsupportedFeatureError),
    If("topology_storage_format == NNR_TPL_REFLIST", _topology_elements_ids_list("0"), orelse=[
        # Binary topologies (an ONNX graph, or any deflate-compressed data) contain NUL bytes, so they fill
        # the rest of the unit; textual ones are NUL-terminated strings, the only form NNCodec reads.
        If("topology_storage_format == NNR_TPL_ONNX or topology_compression_format != NNR_PT_RAW", [
            Field("topology_data", RestBytes(), note="binary: bytes to the end of the unit"),
        ], orelse=[
            Field("topology_data", ST(raw=True), note="text; UTF-8 checked"),
            Fail("not is_utf8(topology_data)", "topology_data is not valid UTF-8", at="topology_data",
                 code="INVALID_UTF8"),
        ]),
    ]),
], title="NNR_TPL (§1.7); no byte_alignment")
class TopologyUnit:
    UNIT_TYPE = NNRUnitType.NNR_TPL

    @property
    def topology_text(self) -> str | None:
        """``topology_data`` decoded as UTF-8 (``None`` for REFLIST or undecodable data)."""
        d = self.topology_data
        if d is None:
            return None
        if isinstance(d, str):
            return d
        try:
            return bytes(d).decode("utf-8")
        except UnicodeDecodeError:
            return None

    def to_topology(self):
        """The unit as an :class:`nnc.topology.Topology` (non-REFLIST formats)."""
        d = self.topology_data
        data = d.encode("utf-8") if isinstance(d, str) else bytes(d or b"")
        return Topology(self.topology_storage_format, self.topology_compression_format, data)


def _is_utf8(b) -> bool:
    if isinstance(b, str):
        return True
    try:
        bytes(b).decode("utf-8", "strict")
        return True
    except UnicodeDecodeError:
        return False


register_names(is_utf8=_is_utf8)


# ---------------------------------------------------------------------------------------------------
# §1.8 NNR_QNT
# ---------------------------------------------------------------------------------------------------
@syntax("nnr_quantization_unit_header() + _payload()", path="nnr_quantization_unit", items=[
    Field("quantization_storage_format", U(8)),
    Field("quantization_compression_format", U(8)),
    Field("quantization_data", ST()),
], title="NNR_QNT (§1.8)")
class QuantizationUnit:
    UNIT_TYPE = NNRUnitType.NNR_QNT


# ---------------------------------------------------------------------------------------------------
# §1.9.3 codebook
# ---------------------------------------------------------------------------------------------------
@syntax("codebook()", [
    Field("codebook_egk", U(4)),
    Field("codebook_size", UE(2)),
    Fail("codebook_size == 0", "codebook_size is 0", at="codebook_size", code="CODEBOOK_INVALID"),
    Fail(over_limit("max_codebook_size", "codebook_size"),
         "codebook of {codebook_size} entries exceeds max_codebook_size={__nnc_limits__.max_codebook_size}",
         LimitExceededError, at="codebook_size"),
    Field("codebook_center_offset", IE(2)),
    Fail("not 0 <= (codebook_size >> 1) + codebook_center_offset < codebook_size",
         "CbZeroOffset = (codebook_size >> 1) + codebook_center_offset lies outside 0..codebook_size-1",
         at="codebook_center_offset", code="CODEBOOK_INVALID"),
    Field("codebook_zero_value", IE(7)),
    Array("codebook_delta_left", UE("codebook_egk"), "(codebook_size >> 1) + codebook_center_offset",
          note="j = CbZeroOffset−1 down to 0"),
    Array("codebook_delta_right", UE("codebook_egk"),
          "codebook_size - 1 - ((codebook_size >> 1) + codebook_center_offset)",
          note="j = CbZeroOffset+1 up to codebook_size−1"),
], title="§1.9.3; strictly increasing integer codebook")
class Codebook:
    @property
    def CbZeroOffset(self) -> int:  # noqa: N802 - the spec's name
        return (self.codebook_size >> 1) + self.codebook_center_offset

    @property
    def zero_offset(self) -> int:
        """Alias of :attr:`CbZeroOffset`."""
        return self.CbZeroOffset

    @property
    def values(self) -> list[int]:
        """The reconstructed codebook (integers, increasing)."""
        z = self.CbZeroOffset
        out = [0] * self.codebook_size
        out[z] = v = self.codebook_zero_value
        for j, d in zip(range(z - 1, -1, -1), self.codebook_delta_left):
            v = v - d - 1
            out[j] = v
        v = self.codebook_zero_value
        for j, d in zip(range(z + 1, self.codebook_size), self.codebook_delta_right):
            v = v + d + 1
            out[j] = v
        return out

    def values_array(self, bound: int = 1 << 31):
        """:attr:`values` as an int64 numpy array (cumulative sums, no per-entry Python work), or ``None`` when
        some value leaves ``-bound..bound-1`` (the decoder refuses such codebooks)."""
        import numpy as np
        z = self.CbZeroOffset
        v0 = int(self.codebook_zero_value)
        left = as_int64(self.codebook_delta_left)   # ue values < 2**48: no overflow here
        right = as_int64(self.codebook_delta_right)
        if abs(v0) >= bound or (left.size and int(left.max()) >= bound) or (right.size and int(right.max()) >= bound):
            return None
        # each step is < 2**31 and there are < 2**31 steps: the sums fit int64
        lo = v0 - np.cumsum(left + 1)
        hi = v0 + np.cumsum(right + 1)
        if (lo.size and int(lo[-1]) < -bound) or (hi.size and int(hi[-1]) >= bound):
            return None
        out = np.empty(self.codebook_size, np.int64)
        out[z] = v0
        out[:z] = lo[::-1][-z:] if z else lo[:0]
        out[z + 1:] = hi
        return out

    @classmethod
    def from_values(cls, values, zero_offset: int, egk: int = 0) -> "Codebook":
        """Build the syntax fields from a strictly increasing integer codebook."""
        values = [int(v) for v in values]
        size = len(values)
        if size == 0 or not 0 <= zero_offset < size:
            raise ValueError("codebook must be non-empty and zero_offset must index into it")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError("codebook values must be strictly increasing")
        left = [values[j + 1] - values[j] - 1 for j in range(zero_offset - 1, -1, -1)]
        right = [values[j] - values[j - 1] - 1 for j in range(zero_offset + 1, size)]
        return cls(codebook_egk=egk, codebook_size=size, codebook_center_offset=zero_offset - (size >> 1),
                   codebook_zero_value=values[zero_offset], codebook_delta_left=left,
                   codebook_delta_right=right)


# ---------------------------------------------------------------------------------------------------
# §1.11 entry points
# ---------------------------------------------------------------------------------------------------
class EntryPoint(NamedTuple):
    """One ``cabac_entry_point_list`` entry; ``bit_offset`` is the first-order offset (t_{j+1} − t_j)."""

    value: int
    dq_state: int = 0
    bit_offset: int = 0


class _EntryPointOffset(Descriptor):
    """First entry: ue(11) of the offset; later entries: ie(7) of the difference to the previous offset."""

    min_bits = 1

    def read(self, r, scope: Scope):
        lp = scope.loop()
        if lp.index == 0:
            return r.ue(11)
        return lp.done[-1].bit_offset + r.ie(7)

    def write(self, w, value, scope: Scope):
        lp = scope.loop()
        if lp.index == 0:
            w.ue(11, value)
        else:
            w.ie(7, value - lp.done[-1].bit_offset)

    def doc(self):
        return "ue(11) if i = 0, else ie(7) of bit_offset[i] − bit_offset[i−1]"


def _block_rows_minus1(rows: int, scan_order: int) -> int:
    # ceil(rows / (4 << scan_order)) - 1, computed the way the reference does (-1 for rows = 0)
    return ((rows + (4 << scan_order) - 1) >> (2 + scan_order)) - 1


def entry_point_count(s) -> int:
    """Number of cabac_entry_point_list entries for an NDU header (§1.11, §6 item 12).

    ``s`` is anything with item access to the header fields (a scope, a dict). Uses the header's
    ``tensor_dimensions[0]``; with DC the rows of G (``g_number_of_rows``) and/or H (``decomposition_rank``):
    both for a BLOCK, otherwise G's when ``decomposed_tensor_type`` is "G" (by default: the
    ``topology_elem_id`` ends in ``_G``), else H's."""
    scan_order = s["scan_order"] or 0
    dims = s["tensor_dimensions"] or []
    if len(dims) <= 1 or scan_order == 0:
        return 0
    cpt = s["compressed_parameter_types"] or 0
    if cpt & CompressedParameterTypes.NNR_CPT_DC:
        g_rows = s["g_number_of_rows"] or 0
        h_rows = s["decomposition_rank"] or 0
        if s["nnr_compressed_data_unit_payload_type"] == PayloadType.NNR_PT_BLOCK:
            n = _block_rows_minus1(g_rows, scan_order) + _block_rows_minus1(h_rows, scan_order)
        else:
            kind = _get_opt(s, "decomposed_tensor_type")
            if kind is None:
                name = s["topology_elem_id"]
                kind = "G" if isinstance(name, str) and name.endswith("_G") else "H"
            n = _block_rows_minus1(g_rows if kind == "G" else h_rows, scan_order)
    else:
        n = _block_rows_minus1(dims[0], scan_order)
    return max(0, n)


def _get_opt(s, key):
    try:
        return s[key]
    except KeyError:
        return None




def _read_entry_points(r, scope: Scope, n: int, path: str) -> list:
    """Bulk reader of a long ``cabac_entry_point_list`` (same records as the item-by-item reader)."""
    dq = scope["dq_flag"] == 1
    start = r.pos
    try:
        first_value = r.u(8)
        first_dq = r.u(3) if dq else 0
        first_off = r.ue(11)
        fixed, deltas = r.eg_records(n - 1, 11 if dq else 8, 7)
    except BitstreamError as exc:
        raise exc.located(byte_offset=start >> 3, syntax_path=path) from None
    deltas = np.where(deltas & 1, (deltas + 1) >> 1, -(deltas >> 1))
    offsets = (first_off + np.cumsum(deltas)).tolist()
    vals = (fixed >> 3 if dq else fixed).tolist()
    dqs = (fixed & 7).tolist() if dq else [0] * (n - 1)
    return [EntryPoint(first_value, first_dq, first_off)] + list(map(EntryPoint, vals, dqs, offsets))


# ---------------------------------------------------------------------------------------------------
# §1.9 NNR_NDU header
# ---------------------------------------------------------------------------------------------------
_PT = "nnr_compressed_data_unit_payload_type"

_NODE_PARENT = [
    Field("node_id_present_flag", U(1)),
    If("node_id_present_flag == 1", [
        Field("device_id", UE(1)),
        Field("parameter_id", UE(5)),
        Field("put_node_depth", UE(4)),
    ]),
    If("mps_parent_signalling_enabled_flag == 1", [
        Field("parent_node_id_present_flag", U(1)),
        If("parent_node_id_present_flag == 1", [
            Field("parent_node_id_type", U(2)),
            Field("temporal_context_modeling_flag", U(1)),
            If("parent_node_id_type == ICNN_NDU_ID", [
                Field("parent_device_id", UE(1)),
                If("node_id_present_flag == 0", [
                    Field("parameter_id", UE(5)),
                    Field("put_node_depth", UE(4)),
                ]),
            ]),
            Field("parent_node_payload_sha256", U(256), when="parent_node_id_type == ICNN_NDU_PL_SHA256"),
            Field("parent_node_payload_sha512", U(512), when="parent_node_id_type == ICNN_NDU_PL_SHA512"),
            Fail("parent_node_id_type == 3", "reserved parent_node_id_type 3", at="parent_node_id_type",
                 code="RESERVED_PARENT_NODE_ID_TYPE"),
        ]),
    ]),
]

_NDU_ITEMS = [
    Field(_PT, U(5)),
    Fail(f"{_PT} > NNR_PT_BLOCK", "reserved nnr_compressed_data_unit_payload_type {" + _PT + "}", at=_PT,
         code="RESERVED_PAYLOAD_TYPE"),
    Field("nnr_multiple_topology_elements_present_flag", U(1)),
    Field("nnr_decompressed_data_format_present_flag", U(1)),
    Field("input_parameters_present_flag", U(1)),
    Fail(f"{_PT} == NNR_PT_BLOCK and nnr_multiple_topology_elements_present_flag == 0",
         "NNR_PT_BLOCK requires nnr_multiple_topology_elements_present_flag = 1",
         at="nnr_multiple_topology_elements_present_flag", code="BLOCK_WITHOUT_ELEMENT_LIST"),
    If("nnr_multiple_topology_elements_present_flag == 1",
       _topology_elements_ids_list("mps_topology_indexed_reference_flag"), orelse=[
           Field("topology_elem_id", ST(), when="mps_topology_indexed_reference_flag == 0"),
           Field("topology_elem_id_index", UE(7), when="mps_topology_indexed_reference_flag == 1"),
       ]),
    If("general_profile_idc == 1", _NODE_PARENT),
    If(f"{_PT} == NNR_PT_FLOAT or {_PT} == NNR_PT_BLOCK", [
        Field("codebook_present_flag", U(1)),
        Sub("codebook", Codebook, when="codebook_present_flag == 1", note='codebook("")'),
    ]),
    Field("dq_flag", U(1), when=f"{_PT} != NNR_PT_RAW_FLOAT"),
    Field("nnr_decompressed_data_format", U(7), when="nnr_decompressed_data_format_present_flag == 1"),
    Fail("input_parameters_present_flag == 0",
         "input_parameters_present_flag = 0 needs out-of-band tensor dimensions (not supported)",
         UnsupportedFeatureError, at="input_parameters_present_flag"),
    Field("tensor_dimensions_flag", U(1)),
    Field("cabac_unary_length_flag", U(1)),
    Field("compressed_parameter_types", U(4)),
    If("compressed_parameter_types & NNR_CPT_DC != 0", [
        Field("decomposition_rank", UE(3)),
        Field("g_number_of_rows", UE(3)),
    ]),
    Fail("tensor_dimensions_flag == 0",
         "tensor_dimensions_flag = 0 needs out-of-band tensor dimensions (not supported)",
         UnsupportedFeatureError, at="tensor_dimensions_flag"),
    Field("count_tensor_dimensions", UE(1)),
    Fail(over_limit("max_rank", "count_tensor_dimensions"),
         "rank {count_tensor_dimensions} exceeds max_rank={__nnc_limits__.max_rank}", LimitExceededError,
         at="count_tensor_dimensions"),
    Array("tensor_dimensions", UE(7), "count_tensor_dimensions"),
    Fail(f"{_PT} != NNR_PT_BLOCK and nnr_multiple_topology_elements_present_flag == 1",
         "topology_tensor_dimension_mapping() is not implemented", UnsupportedFeatureError,
         at="topology_tensor_dimension_mapping()"),
    Field("cabac_unary_length_minus1", U(8), when="cabac_unary_length_flag == 1",
          note="9 when absent"),
    Sub("codebook_dc", Codebook,
        when=f"{_PT} == NNR_PT_BLOCK and compressed_parameter_types & NNR_CPT_DC != 0 "
             "and codebook_present_flag == 1", note='codebook("dc")'),
    If("count_tensor_dimensions > 1", [
        Field("first_tensor_dimension_shift", UE(1), when="general_profile_idc == 1"),
        Field("scan_order", U(4)),
        Loop("cabac_entry_point_list", Expr(entry_point_count, "entry_point_count() (§1.11)"), [
            Field("value", U(8)),
            Field("dq_state", U(3), when="dq_flag == 1"),
            Field("bit_offset", _EntryPointOffset()),
        ], cls=EntryPoint, when="scan_order > 0", note="count = ceil(d0 / (4 << scan_order)) − 1, §1.11",
            fast=lambda r, scope, n, path: _read_entry_points(r, scope, n, path), record_bytes=120),
    ]),
    Align(),
]


@syntax("nnr_compressed_data_unit_header()", _NDU_ITEMS,
        title="NNR_NDU (§1.9); the payload (CABAC bytes or raw float32) is the rest of the unit")
class NduHeader:
    UNIT_TYPE = NNRUnitType.NNR_NDU

    @property
    def payload_type(self) -> PayloadType:
        return PayloadType(self.nnr_compressed_data_unit_payload_type)

    @property
    def unary_length_minus1(self) -> int:
        """``cabac_unary_length_minus1`` with the default 9 when absent (§1.9 notes)."""
        v = self.cabac_unary_length_minus1
        return 9 if v is None else v

    @property
    def element_names(self) -> list:
        """``[topology_elem_id]`` or ``topology_elem_id_list`` (or the index equivalents)."""
        if self.nnr_multiple_topology_elements_present_flag:
            return list(self.topology_elem_id_list if self.topology_elem_id_list is not None
                        else self.topology_elem_id_index_list)
        return [self.topology_elem_id if self.topology_elem_id is not None else self.topology_elem_id_index]


BODY_CLASSES = {
    NNRUnitType.NNR_STR: StartUnit,
    NNRUnitType.NNR_MPS: ModelParameterSet,
    NNRUnitType.NNR_LPS: LayerParameterSet,
    NNRUnitType.NNR_TPL: TopologyUnit,
    NNRUnitType.NNR_QNT: QuantizationUnit,
    NNRUnitType.NNR_NDU: NduHeader,
}

ALL_STRUCTURES = [UnitHeader, StartUnit, ModelParameterSet, SparsificationPerformanceMap, PruningPerformanceMap,
                  UnificationPerformanceMap, DecompositionPerformanceMap, LayerParameterSet, TopologyUnit,
                  QuantizationUnit, NduHeader, Codebook]
