"""Enumerations of the NNR high-level syntax (spec §1.3)."""
from __future__ import annotations

from enum import IntEnum, IntFlag

from ..topology import TopologyCompressionFormat, TopologyStorageFormat

__all__ = [
    "NNRUnitType",
    "PayloadType",
    "CompressedParameterTypes",
    "QuantizationMethodFlags",
    "TopologyStorageFormat",
    "TopologyCompressionFormat",
    "PruningInformationRepresentation",
    "DecompressedDataFormat",
    "ParentNodeIdType",
]


class NNRUnitType(IntEnum):
    """``nnr_unit_type`` u(6). Values 7..63 are reserved."""

    NNR_STR = 0
    NNR_MPS = 1
    NNR_LPS = 2
    NNR_TPL = 3
    NNR_QNT = 4
    NNR_NDU = 5
    NNR_AGG = 6


class PayloadType(IntEnum):
    """``nnr_compressed_data_unit_payload_type`` u(5). Values 4..31 are reserved."""

    NNR_PT_INT = 0
    NNR_PT_FLOAT = 1
    NNR_PT_RAW_FLOAT = 2
    NNR_PT_BLOCK = 3


class CompressedParameterTypes(IntFlag):
    """Bits of ``compressed_parameter_types`` u(4)."""

    NNR_CPT_DC = 0x01
    NNR_CPT_LS = 0x02
    NNR_CPT_BN = 0x04
    NNR_CPT_BI = 0x08


class QuantizationMethodFlags(IntFlag):
    """Bits of ``mps_quantization_method_flags`` / ``lps_quantization_method_flags`` u(3)."""

    NNR_QSU = 0x1
    NNR_QCB = 0x2


class PruningInformationRepresentation(IntEnum):
    NNR_TPL_BMSK = 0
    NNR_TPL_DICT = 1


class DecompressedDataFormat(IntEnum):
    """``nnr_decompressed_data_format`` u(7)."""

    TENSOR_INT32 = 0
    TENSOR_FLOAT32 = 1
    TENSOR_INT2 = 2
    TENSOR_INT3 = 3
    TENSOR_INT4 = 4
    TENSOR_INT8 = 5
    TENSOR_INT16 = 6
    TENSOR_INT64 = 7
    TENSOR_FLOAT16 = 8
    TENSOR_FLOAT64 = 9


class ParentNodeIdType(IntEnum):
    """``parent_node_id_type`` u(2). Value 3 is reserved."""

    ICNN_NDU_ID = 0
    ICNN_NDU_PL_SHA256 = 1
    ICNN_NDU_PL_SHA512 = 2
