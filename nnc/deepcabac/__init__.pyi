from dataclasses import dataclass
from typing import Sequence

import numpy as np

@dataclass(frozen=True)
class TensorCoding:
    shape: tuple[int, ...]
    profile: int = 1
    unary_length: int = 11
    qp_bits: int | None = 8
    scan_order: int = 0
    dq: bool = False
    parent_present: bool = False
    codebook_size: int = 0
    codebook_zero: int = 0
    tca_base: np.ndarray | None = None
    hdsp_history: np.ndarray | None = None
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def size(self) -> int: ...

@dataclass(frozen=True)
class EncodeOptions:
    param_opt: bool = True
    row_skipping: bool = False
    hdsp: bool = False
    allow_dq_mismatch: bool = False

@dataclass(frozen=True)
class EntryPoint:
    value: int
    dq_state: int
    bit_offset: int

@dataclass
class DecodedPayload:
    levels: list[np.ndarray]
    qp_offsets: list[int | None]
    hdsp_flags: list[bool]
    row_skip_flags: list[bool]
    entry_points: list[list[EntryPoint]]
    consumed: int
    parallel: list[bool] = ...

class QuantizationOverflowError(OverflowError): ...

def effective_scan_order(coding: TensorCoding) -> int: ...
def block_row_count(coding: TensorCoding) -> int: ...
def effective_scan(shape: Sequence[int], scan_order: int) -> int: ...
def encode_payload(
    items: Sequence[tuple[np.ndarray, TensorCoding, int, EncodeOptions]], *, threads: int = 1,
) -> tuple[bytes, list[list[EntryPoint]]]: ...
def decode_payload(
    data: bytes | memoryview | np.ndarray,
    tensors: Sequence[TensorCoding],
    *,
    entry_points: Sequence[Sequence[EntryPoint] | None] | None = None,
    threads: int | None = None,
) -> DecodedPayload: ...
def encode_payloads(
    jobs: Sequence[Sequence[tuple[np.ndarray, TensorCoding, int, EncodeOptions]]], *, max_workers: int | None = None
) -> list[tuple[bytes, list[list[EntryPoint]]]]: ...
def decode_payloads(
    jobs: Sequence[tuple[bytes | memoryview | np.ndarray, Sequence[TensorCoding]]], *, max_workers: int | None = None
) -> list[DecodedPayload]: ...
def quantize(x: np.ndarray, step: float, *, dq: bool, scan_order: int = 0) -> np.ndarray: ...
