"""The message-codec protocol of the FL layer, and the plain update codec of clustered FL.

Every message an FL method puts on the wire is ``bytes`` produced by an encoder and read back by a decoder:

* :class:`MessageEncoder` ``encode(value) -> bytes`` and :class:`MessageDecoder` ``decode(bytes) -> value``
  are the two ends; :class:`MessageCodec` is both. :class:`UpdateCodec` (updates of clustered FL),
  :class:`~nnc.fl.distill.SoftLabelEncoder` / :class:`~nnc.fl.distill.SoftLabelDecoder` (soft labels of
  CFD) follow it. The return type of ``encode`` never depends on a setting: it is always ``bytes``, and the
  bytes counted on the wire are ``len()`` of it.
"""
from __future__ import annotations

from typing import Mapping, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..codec import decode as _nnc_decode
from ..codec import encode as _nnc_encode
from ..config import DecoderConfig, EncoderConfig
from ..errors import UpdateStateError
from ..incremental import in_model_shape

__all__ = ["MessageEncoder", "MessageDecoder", "MessageCodec", "UpdateCodec", "limits_for"]

T = TypeVar("T")
Tensors = Mapping[str, np.ndarray]


def limits_for(shapes: Mapping[str, tuple], *, extra_tensors: int = 0, max_units: int | None = None
               ) -> DecoderConfig:
    """Decoder limits for a message that can only hold tensors of these shapes: :meth:`DecoderConfig.strict`
    with the total (16 bytes per element: outputs, the levels an update decoder keeps and temporaries, room for
    float64 reconstruction), the largest tensor and the unit count derived from them (``max_units``, default
    8 + 2 per tensor), so that a few bytes declaring a huge tensor are refused before decoding. The model bounds
    the units, not strict()'s density bound: an update of many small tensors is many tiny NDUs."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes.values()]
    total, largest = sum(sizes), max(sizes, default=1)
    n = len(sizes) + extra_tensors
    return DecoderConfig.strict(max_total_bytes=max(16 * total, 1 << 16)).replace(
        max_units=8 + 2 * n if max_units is None else max_units, max_tensor_elements=max(largest, 1), max_rank=8,
        min_unit_bytes=0)


@runtime_checkable
class MessageEncoder(Protocol[T]):
    """Sender end: one value in, the bytes that go on the wire out."""

    def encode(self, value: T) -> bytes: ...


@runtime_checkable
class MessageDecoder(Protocol[T]):
    """Receiver end: the bytes off the wire in, the value out (raises an :class:`~nnc.errors.NNCError`)."""

    def decode(self, data: bytes) -> T: ...


@runtime_checkable
class MessageCodec(MessageEncoder[T], MessageDecoder[T], Protocol[T]):
    """Both ends in one object (stateless codecs such as :class:`UpdateCodec`)."""


class UpdateCodec:
    """Updates as bytes: ``encode(delta) -> bytes``, ``decode(bytes, model) -> delta`` (float32 dicts).

    With a ``qp`` the bytes are one NNC bitstream (``nnc.encode`` at that QP); ``qp=None`` sends raw float32
    (the tensors' bytes concatenated in sorted name order, a FedAvg-style baseline; decoding then needs the
    model for names and shapes). ``model`` (or ``template`` given here) also gives 0-d tensors their shape
    back (NNC codes them with shape (1,)).
    """

    def __init__(self, qp: int | None = -40, nonweight_qp: int = -75, template: Tensors | None = None):
        self.qp = qp
        self.config = None if qp is None else EncoderConfig(qp=qp, nonweight_qp=nonweight_qp)
        self.template = None if template is None else {k: np.shape(v) for k, v in template.items()}

    def encode(self, delta: Tensors) -> bytes:
        if self.config is None:
            return b"".join(np.ascontiguousarray(delta[k], np.float32).tobytes() for k in sorted(delta))
        return _nnc_encode({k: np.asarray(v, np.float32) for k, v in delta.items()}, self.config)

    def decode(self, data: bytes, model: Tensors | None = None, limits: DecoderConfig | None = None
               ) -> dict[str, np.ndarray]:
        """The delta. ``limits``: decoder limits for the NNC bitstream; default: derived from the model
        (:func:`limits_for`) when it is known, so an upload cannot make the server decode more than a model."""
        shapes = self.template if model is None else {k: np.shape(v) for k, v in model.items()}
        data = bytes(data)
        if self.config is None:
            if shapes is None:
                raise UpdateStateError("a raw float32 update needs the model's names and shapes to decode")
            sizes = {k: int(np.prod(shapes[k], dtype=np.int64)) for k in sorted(shapes)}
            if len(data) != 4 * sum(sizes.values()):
                raise UpdateStateError(f"raw float32 update has {len(data)} bytes, the model needs "
                                       f"{4 * sum(sizes.values())}")
            flat = np.frombuffer(data, np.float32)
            out, pos = {}, 0
            for k, n in sizes.items():
                out[k] = flat[pos:pos + n].reshape(shapes[k]).copy()
                pos += n
            return out
        if limits is None and shapes is not None:
            limits = limits_for(shapes)
        got = _nnc_decode(data, limits)
        with np.errstate(over="ignore", invalid="ignore"):
            out = {k: np.asarray(v, np.float32) for k, v in got.items()}
        if shapes is None:
            return out
        return {k: in_model_shape(v, shapes[k]) if k in shapes else v for k, v in out.items()}

    @staticmethod
    def nbytes(payload: bytes) -> int:
        return len(payload)
