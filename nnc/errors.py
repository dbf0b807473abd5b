"""The nnc exception hierarchy.

Every error nnc raises on purpose derives from :class:`NNCError`. Each subclass also derives from the
built-in exception a Python user would expect for that kind of failure, so ``except ValueError`` keeps
working for callers that do not know about nnc.

=============================  ==========================  ==================================================
class                          also a                      raised when
=============================  ==========================  ==================================================
``NNCError``                   ``Exception``               root; never raised directly
``BitstreamError``             ``ValueError``              a bitstream violates the NNC syntax or semantics
``TruncatedBitstreamError``    ``BitstreamError, EOFError`` a read ran past the end of a unit or the stream
``LimitExceededError``         ``BitstreamError``          a header asks for more than ``DecoderConfig`` allows
``UnsupportedFeatureError``    ``NotImplementedError``     valid syntax that nnc does not implement
``ConfigError``                ``ValueError``              contradictory or out-of-range encoder settings
``InputError``                 ``ValueError``              tensors given to the encoder cannot be coded
``ModelFormatError``           ``ValueError``              a model file cannot be read or written
``ConformanceError``           ``ValueError``              ``check(..., raise_on_error=True)`` found violations
``UpdateStateError``           ``ValueError``              an incremental update does not fit the held state
=============================  ==========================  ==================================================

Bitstream errors carry where they happened: ``unit_index`` (0-based NNR unit number), ``byte_offset``
(offset of the failing read from the start of the bitstream, or of the unit if the stream offset is
unknown) and ``syntax_path`` (e.g. ``"NNR_NDU.nnr_compressed_data_unit_header.tensor_dimensions[1]"``).
Errors found by the CABAC core also say where in its session: ``tensor_index`` (the tensor of the NDU, in
coding order), ``position`` (the element, row-major, or row) and, for bitstream errors, ``payload_bit_offset``
(the arithmetic decoder's read position in the NDU payload, in bits); ``None`` where not known.
"""

from __future__ import annotations

__all__ = [
    "NNCError",
    "BitstreamError",
    "TruncatedBitstreamError",
    "LimitExceededError",
    "UnsupportedFeatureError",
    "ConfigError",
    "InputError",
    "ModelFormatError",
    "ConformanceError",
    "UpdateStateError",
]


class NNCError(Exception):
    """Root of every exception nnc raises deliberately.

    ``code`` is a stable machine-readable name of the finding where one exists (the conformance checker's
    violation codes, :data:`nnc.conformance.checker.CODES`), else ``None``: classify errors by ``code`` and type,
    never by message text.
    """

    code: str | None = None
    tensor_index: int | None = None
    position: int | None = None

    def __init__(self, *args, tensor_index: int | None = None, position: int | None = None):
        super().__init__(*args)
        if tensor_index is not None:
            self.tensor_index = tensor_index
        if position is not None:
            self.position = position


class BitstreamError(NNCError, ValueError):
    """The bitstream is malformed: it violates the NNC syntax or a semantic constraint.

    Attributes:
        unit_index: 0-based index of the NNR unit being read, or ``None``.
        byte_offset: byte offset (from the start of the bitstream) where the problem was found, or ``None``.
        syntax_path: dotted path of the syntax element, or ``None``.
        code: the conformance code of the violation, or ``None`` (see :class:`NNCError`).
        tensor_index, position: tensor of the NDU and element where the CABAC core failed, or ``None``.
        payload_bit_offset: the core's read position in the NDU payload (bits) when it failed, or ``None``.
    """

    payload_bit_offset: int | None = None

    def __init__(self, message: str, *, unit_index: int | None = None, byte_offset: int | None = None,
                 syntax_path: str | None = None, code: str | None = None, tensor_index: int | None = None,
                 position: int | None = None, payload_bit_offset: int | None = None):
        self.reason = message
        if code is not None:
            self.code = code
        self.unit_index = unit_index
        self.byte_offset = byte_offset
        self.syntax_path = syntax_path
        if payload_bit_offset is not None:
            self.payload_bit_offset = payload_bit_offset
        super().__init__(self._format(), tensor_index=tensor_index, position=position)

    def _format(self) -> str:
        where = []
        if self.unit_index is not None:
            where.append(f"unit {self.unit_index}")
        if self.byte_offset is not None:
            where.append(f"byte {self.byte_offset}")
        if self.syntax_path:
            where.append(self.syntax_path)
        return f"{self.reason} ({', '.join(where)})" if where else self.reason

    def located(self, *, unit_index: int | None = None, byte_offset: int | None = None,
                syntax_path: str | None = None) -> "BitstreamError":
        """Fill in location fields that are still unknown (returns ``self`` for ``raise e.located(...)``)."""
        if self.unit_index is None and unit_index is not None:
            self.unit_index = unit_index
        if self.byte_offset is None and byte_offset is not None:
            self.byte_offset = byte_offset
        if self.syntax_path is None and syntax_path is not None:
            self.syntax_path = syntax_path
        self.args = (self._format(),)
        return self

    def __str__(self) -> str:  # keep the message in sync with located()
        return self._format()


class TruncatedBitstreamError(BitstreamError, EOFError):
    """A read ran past the end of the unit or of the bitstream."""


class LimitExceededError(BitstreamError):
    """A header asks for more elements, bytes, units or rank than the ``DecoderConfig`` limits allow."""


class UnsupportedFeatureError(NNCError, NotImplementedError):
    """The bitstream uses syntax that is valid but that nnc does not implement."""

    code = "UNSUPPORTED_FEATURE"


class ConfigError(NNCError, ValueError):
    """Encoder or decoder settings are out of range or contradict each other."""


class InputError(NNCError, ValueError):
    """The tensors handed to the encoder cannot be coded (dtype, shape, name, non-finite values...)."""


class ModelFormatError(NNCError, ValueError):
    """A model file (ONNX, PyTorch, safetensors, npz) cannot be read or written."""


class ConformanceError(NNCError, ValueError):
    """Raised by ``nnc.check(..., raise_on_error=True)``; ``report`` holds every violation found."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class UpdateStateError(NNCError, ValueError):
    """An incremental update does not match the base/parent state held by the decoder or encoder."""
