"""Serialising NNR units (spec §1.2 size rule) and convenience constructors for each unit type."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError, UnsupportedFeatureError
from .bits import BitReader, BitWriter
from .enums import NNRUnitType, PayloadType, QuantizationMethodFlags, TopologyCompressionFormat, TopologyStorageFormat
from ..topology import Topology
from .model import Context, ParsedBitstream, Unit
from .syntax import Scope, _write_items, read_struct, write_struct
from .units import (UNIT_HEADER_ITEMS, Codebook, EntryPoint, LayerParameterSet, ModelParameterSet, NduHeader,
                    QuantizationUnit, StartUnit, TopologyUnit, entry_point_count)

__all__ = ["write_unit", "start_unit", "model_parameter_set", "mps_unit", "lps_unit", "tpl_unit", "qnt_unit",
           "ndu_header", "ndu_unit", "NduHeaderSpec", "canonical", "SHORT_SIZE_MAX"]

#: Largest unit (in bytes, size field included) written with the 2-byte size field (§1.2).
SHORT_SIZE_MAX = 32767

_NEEDS_CONTEXT = (NNRUnitType.NNR_MPS, NNRUnitType.NNR_NDU)


def write_unit(unit_body, *, context: Context | None = None, payload=b"", independently_decodable_flag: int = 1,
               partial_data_counter: int | None = None, size_form: str = "auto") -> bytes:
    """Serialise one NNR unit.

    ``unit_body`` is a body object (:class:`StartUnit`, :class:`ModelParameterSet`, :class:`LayerParameterSet`,
    :class:`TopologyUnit`, :class:`QuantizationUnit`, :class:`NduHeader`) or a parsed :class:`Unit` (its header
    flags, payload and context are then taken over unless given here). ``context`` (profile and MPS flags) is
    required for NNR_MPS and NNR_NDU. ``payload`` is the NDU payload (CABAC bytes or raw float32), appended
    after the header. ``size_form``: ``"auto"`` applies the §1.2 rule (2-byte size field iff the whole unit is
    at most 32767 bytes); ``"short"``/``"long"`` force a form. Invalid values raise :class:`ConfigError`."""
    if isinstance(unit_body, Unit):
        u = unit_body
        if u.body is None or u.header is None:
            raise ConfigError(f"unit {u.index} was not parsed successfully and cannot be re-serialised")
        if context is None:
            context = u.context
        if not payload and u.payload is not None:
            payload = u.payload
        independently_decodable_flag = u.header.independently_decodable_flag
        if partial_data_counter is None and u.header.partial_data_counter_present_flag:
            partial_data_counter = u.header.partial_data_counter
        unit_body = u.body
    unit_type = getattr(type(unit_body), "UNIT_TYPE", None)
    if unit_type is None:
        raise ConfigError(f"cannot write a unit from a {type(unit_body).__name__}")
    if context is None:
        if unit_type in _NEEDS_CONTEXT:
            raise ConfigError(f"{unit_type.name}: a Context (profile, MPS flags) is required to write this unit")
        context = Context()
    payload = memoryview(payload).cast("B") if not isinstance(payload, (bytes, bytearray)) else payload
    if len(payload) and unit_type != NNRUnitType.NNR_NDU:
        raise ConfigError(f"{unit_type.name} units have no payload beyond their syntax")
    if unit_type == NNRUnitType.NNR_NDU and unit_body.nnr_compressed_data_unit_payload_type == \
            PayloadType.NNR_PT_RAW_FLOAT:
        want = 4
        for d in unit_body.tensor_dimensions or ():
            want *= d
        if want != len(payload):
            raise ConfigError(f"NNR_PT_RAW_FLOAT payload has {len(payload)} bytes, tensor_dimensions need {want}")

    w = BitWriter()
    hdr = {"nnr_unit_type": int(unit_type), "independently_decodable_flag": independently_decodable_flag,
           "partial_data_counter_present_flag": 0 if partial_data_counter is None else 1,
           "partial_data_counter": partial_data_counter}
    _write_items(UNIT_HEADER_ITEMS, hdr, w, Scope({}), f"{unit_type.name}.nnr_unit_header")
    write_struct(unit_body, w, context.scope(), f"{unit_type.name}.{type(unit_body).SYNTAX.path}")
    body = w.getvalue()

    length = len(body) + len(payload)
    if size_form == "auto":
        short = length + 2 <= SHORT_SIZE_MAX
    elif size_form in ("short", "long"):
        short = size_form == "short"
    else:
        raise ConfigError(f"size_form must be 'auto', 'short' or 'long', not {size_form!r}")
    if short:
        total = length + 2
        if total > SHORT_SIZE_MAX:
            raise ConfigError(f"a {total}-byte unit does not fit the short (15-bit) size field")
        size_field = total.to_bytes(2, "big")
    else:
        total = length + 4
        if total >= 1 << 31:
            raise ConfigError(f"a {total}-byte unit does not fit the 31-bit size field")
        size_field = ((1 << 31) | total).to_bytes(4, "big")
    return b"".join((size_field, body, payload))


def write_bitstream(units: ParsedBitstream | list[Unit]) -> bytes:
    """Re-serialise parsed units (NDU payloads passed through): ``write_bitstream(parse(data)) == data`` for a
    bitstream nnc or NNCodec wrote."""
    return b"".join(write_unit(u) for u in units)


# ---------------------------------------------------------------------------------------------------
# Convenience constructors
# ---------------------------------------------------------------------------------------------------
def start_unit(profile: int = 1) -> bytes:
    """NNR_STR with ``general_profile_idc = profile`` (always ``00 04 02 PP``)."""
    return write_unit(StartUnit(general_profile_idc=profile))


def model_parameter_set(*, mps_qp_density: int = 2, mps_quantization_parameter: int = 0,
                        mps_quantization_method_flags: int = QuantizationMethodFlags.NNR_QSU,
                        mps_parent_signalling_enabled_flag: int = 0, nnr_pre_flag: int = 0,
                        topology_carriage_flag: int = 1, mps_topology_indexed_reference_flag: int = 0,
                        **fields) -> ModelParameterSet:
    """A :class:`ModelParameterSet` with NNCodec's defaults (every flag 0 unless given). Other syntax elements
    (performance maps, ``base_model_id``...) can be passed by name; set their presence flags as well."""
    vals = dict(topology_carriage_flag=topology_carriage_flag, mps_sparsification_flag=0, mps_pruning_flag=0,
                mps_unification_flag=0, mps_decomposition_performance_map_flag=0,
                mps_quantization_method_flags=int(mps_quantization_method_flags),
                mps_topology_indexed_reference_flag=mps_topology_indexed_reference_flag,
                base_model_id_present_flag=0, validation_set_performance_present_flag=0,
                metric_type_performance_map_valid_flag=0,
                mps_parent_signalling_enabled_flag=mps_parent_signalling_enabled_flag,
                nnr_pre_flag=nnr_pre_flag if mps_parent_signalling_enabled_flag else None,
                mps_qp_density=mps_qp_density, mps_quantization_parameter=mps_quantization_parameter)
    vals.update(fields)
    return ModelParameterSet(**vals)


_MPS_ALIASES = {"qp_density": "mps_qp_density", "quantization_parameter": "mps_quantization_parameter",
                "parent_signalling": "mps_parent_signalling_enabled_flag", "pre_flag": "nnr_pre_flag",
                "quantization_method_flags": "mps_quantization_method_flags"}


def mps_unit(profile: int = 1, **fields) -> bytes:
    """NNR_MPS for ``profile``; keyword arguments as for :func:`model_parameter_set` (short aliases
    ``qp_density``, ``quantization_parameter``, ``parent_signalling``, ``pre_flag`` are accepted).
    NNCodec's default unit is ``00 08 06 81 00 40 00 80``."""
    for short, full in _MPS_ALIASES.items():
        if short in fields:
            v = fields.pop(short)
            fields[full] = int(v) if isinstance(v, bool) else v
    mps = model_parameter_set(**fields)
    return write_unit(mps, context=Context(general_profile_idc=profile))


def lps_unit(*, lps_self_contained_flag: int = 1, lps_qp_density: int = 2, lps_quantization_parameter: int = 0,
             lps_quantization_method_flags: int = QuantizationMethodFlags.NNR_QSU, **fields) -> bytes:
    """NNR_LPS (never produced by NNCodec)."""
    vals = dict(lps_self_contained_flag=lps_self_contained_flag, lps_sparsification_flag=0, lps_pruning_flag=0,
                lps_unification_flag=0, lps_quantization_method_flags=int(lps_quantization_method_flags),
                lps_qp_density=lps_qp_density, lps_quantization_parameter=lps_quantization_parameter)
    vals.update(fields)
    return write_unit(LayerParameterSet(**vals))


def tpl_unit(storage_format=TopologyStorageFormat.NNR_TPL_UNREC,
             compression_format: int = TopologyCompressionFormat.NNR_PT_RAW, data=b"") -> bytes:
    """NNR_TPL. ``data`` (str or bytes, no NUL) becomes ``topology_data``; for NNR_TPL_REFLIST pass the list of
    element names instead. ``storage_format`` may also be an :class:`nnc.topology.Topology`.
    NNCodec writes ``00 06 0E ss 00 00``."""
    if isinstance(storage_format, Topology):
        topo = storage_format
        storage_format, compression_format, data = topo.storage_format, topo.compression_format, topo.data
    if storage_format == TopologyStorageFormat.NNR_TPL_REFLIST:
        names = list(data)
        if len(names) < 2:
            raise ConfigError("a REFLIST topology needs at least 2 element names")
        body = TopologyUnit(topology_storage_format=int(storage_format),
                            topology_compression_format=int(compression_format),
                            count_topology_elements_minus2=len(names) - 2, topology_elem_id_list=names)
    elif storage_format == TopologyStorageFormat.NNR_TPL_PRUN:
        raise UnsupportedFeatureError("nnr_pruning_topology_container (NNR_TPL_PRUN) is not implemented")
    else:
        body = TopologyUnit(topology_storage_format=int(storage_format),
                            topology_compression_format=int(compression_format), topology_data=data)
    return write_unit(body)


def qnt_unit(storage_format: int = 0, compression_format: int = 0, data: str = "") -> bytes:
    """NNR_QNT (never produced by NNCodec)."""
    return write_unit(QuantizationUnit(quantization_storage_format=storage_format,
                                       quantization_compression_format=compression_format,
                                       quantization_data=data))


def ndu_header(context: Context, *, tensor_dimensions, topology_elem_id: str | None = None,
               payload_type: int = PayloadType.NNR_PT_FLOAT, dq_flag: int = 0, scan_order: int = 0,
               entry_points=(), cabac_unary_length_minus1: int | None = 10,
               compressed_parameter_types: int = 0, topology_elem_id_list=None, topology_elem_id_index=None,
               topology_elem_id_index_list=None, codebook: Codebook | None = None,
               codebook_dc: Codebook | None = None, decomposition_rank: int | None = None,
               g_number_of_rows: int | None = None, device_id: int | None = 0, parameter_id: int = 0,
               put_node_depth: int = 0, parent_node_id_present_flag: int = 0, parent_node_id_type: int = 0,
               temporal_context_modeling_flag: int = 0, parent_device_id: int = 0,
               parent_node_payload_sha256: int | None = None, parent_node_payload_sha512: int | None = None,
               nnr_decompressed_data_format: int | None = None, first_tensor_dimension_shift: int = 0,
               canonicalize: bool = True) -> NduHeader:
    """Build an :class:`NduHeader` with the presence flags and counts derived from the values given.

    ``entry_points``: (value, dq_state, bit_offset) tuples with first-order bit offsets (§1.11); their
    number must be :func:`entry_point_count` of the header. ``device_id=None`` omits the node id
    (``node_id_present_flag = 0``, profile 1). ``cabac_unary_length_minus1=None`` omits it (decoders then
    use 9). Element lists (``topology_elem_id_list``/``..._index_list``) select the multiple-elements form.
    ``canonicalize=False`` returns the header as built, without the write-and-read of :func:`canonical`
    (for callers that write it at once, which raises the same errors)."""
    pt = int(payload_type)
    multi = topology_elem_id_list is not None or topology_elem_id_index_list is not None
    names = topology_elem_id_list if topology_elem_id_list is not None else topology_elem_id_index_list
    dims = [int(d) for d in tensor_dimensions]
    h = NduHeader(
        nnr_compressed_data_unit_payload_type=pt,
        nnr_multiple_topology_elements_present_flag=int(multi),
        nnr_decompressed_data_format_present_flag=int(nnr_decompressed_data_format is not None),
        input_parameters_present_flag=1,
        count_topology_elements_minus2=(len(names) - 2) if multi else None,
        topology_elem_id_list=list(topology_elem_id_list) if topology_elem_id_list is not None else None,
        topology_elem_id_index_list=(list(topology_elem_id_index_list)
                                     if topology_elem_id_index_list is not None else None),
        topology_elem_id=topology_elem_id, topology_elem_id_index=topology_elem_id_index,
        node_id_present_flag=int(device_id is not None), device_id=device_id, parameter_id=parameter_id,
        put_node_depth=put_node_depth, parent_node_id_present_flag=parent_node_id_present_flag,
        parent_node_id_type=parent_node_id_type, temporal_context_modeling_flag=temporal_context_modeling_flag,
        parent_device_id=parent_device_id, parent_node_payload_sha256=parent_node_payload_sha256,
        parent_node_payload_sha512=parent_node_payload_sha512,
        codebook_present_flag=int(codebook is not None), codebook=codebook, codebook_dc=codebook_dc,
        dq_flag=dq_flag, nnr_decompressed_data_format=nnr_decompressed_data_format,
        tensor_dimensions_flag=1, cabac_unary_length_flag=int(cabac_unary_length_minus1 is not None),
        compressed_parameter_types=int(compressed_parameter_types), decomposition_rank=decomposition_rank,
        g_number_of_rows=g_number_of_rows, count_tensor_dimensions=len(dims), tensor_dimensions=dims,
        cabac_unary_length_minus1=cabac_unary_length_minus1,
        first_tensor_dimension_shift=first_tensor_dimension_shift,
        scan_order=scan_order if len(dims) > 1 else None,
        cabac_entry_point_list=[EntryPoint(*e) if not isinstance(e, EntryPoint) else e for e in entry_points],
    )
    if context.general_profile_idc != 1:
        h.node_id_present_flag = None
    if not (context.general_profile_idc == 1 and context.mps_parent_signalling_enabled_flag):
        h.parent_node_id_present_flag = None
    want = entry_point_count(_HeaderView(h))
    if len(h.cabac_entry_point_list) != want:
        raise ConfigError(f"{len(h.cabac_entry_point_list)} entry point(s) given, the header needs {want} (§1.11)")
    return canonical(h, context) if canonicalize else h


def canonical(body, context: Context | None = None):
    """``body`` as the reader would return it after writing it: fields whose conditions do not hold become
    ``None``, lists and floats get their parsed types. Raises :class:`ConfigError` for unwritable values."""
    ctx = context or Context()
    w = BitWriter()
    path = type(body).SYNTAX.path
    write_struct(body, w, ctx.scope(), path)
    data = w.getvalue()
    return read_struct(type(body), BitReader(data), ctx.scope(), path)


class _HeaderView:
    """Item access to a header's attributes (for :func:`entry_point_count`)."""

    def __init__(self, h):
        self.h = h

    def __getitem__(self, key):
        if not hasattr(self.h, key):
            raise KeyError(key)
        return getattr(self.h, key)


@dataclass
class NduHeaderSpec:
    """A compact description of a single-tensor NDU header (alternative to :func:`ndu_header` keywords).

    ``parent_signalling`` is the MPS's ``mps_parent_signalling_enabled_flag`` the unit is written under;
    ``scan_order=None`` means "not signalled" (rank-1 tensors)."""

    payload_type: int
    name: str
    shape: tuple
    dq_flag: int = 0
    unary_length_minus1: int | None = 10
    scan_order: int | None = 0
    entry_points: list = field(default_factory=list)
    device_id: int | None = 0
    parameter_id: int = 0
    put_node_depth: int = 0
    parent_signalling: bool = False
    parent_node_id_present: bool = False
    temporal_context_modeling_flag: bool = False
    decompressed_data_format: int | None = None
    codebook: Codebook | None = None

    def to_header(self, context: Context, canonicalize: bool = True) -> NduHeader:
        pt = int(self.payload_type)
        return ndu_header(
            context, tensor_dimensions=list(self.shape) or [1], topology_elem_id=self.name, payload_type=pt,
            dq_flag=None if pt == PayloadType.NNR_PT_RAW_FLOAT else int(self.dq_flag),
            scan_order=self.scan_order or 0,
            entry_points=self.entry_points, cabac_unary_length_minus1=self.unary_length_minus1,
            device_id=self.device_id, parameter_id=self.parameter_id, put_node_depth=self.put_node_depth,
            parent_node_id_present_flag=int(bool(self.parent_node_id_present)),
            temporal_context_modeling_flag=int(bool(self.temporal_context_modeling_flag)),
            nnr_decompressed_data_format=self.decompressed_data_format, codebook=self.codebook,
            canonicalize=canonicalize)


def ndu_unit(*args, context: Context | None = None, profile: int | None = None,
             independently_decodable_flag: int = 1, partial_data_counter: int | None = None,
             **header_fields) -> bytes:
    """NNR_NDU. Two call forms:

    * ``ndu_unit(payload, context=ctx, **header_fields)`` — header from :func:`ndu_header` keywords;
    * ``ndu_unit(header, payload, context=ctx | profile=p)`` — ``header`` an :class:`NduHeader` or
      :class:`NduHeaderSpec` (with ``profile``, the context is built from ``profile`` and the spec's
      ``parent_signalling``)."""
    if len(args) == 1 and not isinstance(args[0], (NduHeader, NduHeaderSpec)):
        if context is None:
            if profile is None:
                raise ConfigError("ndu_unit needs context= (or profile=)")
            context = Context(general_profile_idc=profile)
        h = ndu_header(context, canonicalize=False, **header_fields)
        payload = args[0]
    elif len(args) == 2 and isinstance(args[0], (NduHeader, NduHeaderSpec)) and not header_fields:
        h, payload = args
        if context is None:
            if profile is None:
                raise ConfigError("ndu_unit needs context= (or profile=)")
            parent = int(bool(getattr(h, "parent_signalling", False))) if profile == 1 else 0
            context = Context(general_profile_idc=profile, mps_parent_signalling_enabled_flag=parent)
        if isinstance(h, NduHeaderSpec):
            h = h.to_header(context, canonicalize=False)
    else:
        raise ConfigError("ndu_unit(payload, context=..., **fields) or ndu_unit(header, payload, context=...)")
    return write_unit(h, context=context, payload=payload, independently_decodable_flag=independently_decodable_flag,
                      partial_data_counter=partial_data_counter)
