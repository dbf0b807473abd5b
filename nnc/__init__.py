"""nnc: MPEG NNC (ISO/IEC 15938-17) neural-network coding, bit-exactly interoperable with NNCodec 2.1.3.

One-shot functions: :func:`encode`, :func:`decode`, :func:`decode_model`, :func:`inspect`, :func:`check`.
Reusable objects for loops: :class:`Encoder`, :class:`Decoder`, :class:`UpdateEncoder`, :class:`UpdateDecoder`.
Settings: :class:`EncoderConfig`, :class:`DecoderConfig`. Errors: :class:`NNCError` and its subclasses.
"""
from .codec import DecodedModel, DecodedTensor, Decoder, Encoder, decode, decode_model, encode
from .config import DecoderConfig, EncoderConfig
from .errors import (BitstreamError, ConfigError, ConformanceError, InputError, LimitExceededError,
                     ModelFormatError, NNCError, TruncatedBitstreamError, UnsupportedFeatureError,
                     UpdateStateError)
from .quant import step_size
from .topology import Topology

__version__ = "0.1.0"

__all__ = [
    "encode", "decode", "decode_model", "inspect", "check",
    "Encoder", "Decoder", "UpdateEncoder", "UpdateDecoder", "DecodedModel", "DecodedTensor",
    "EncoderConfig", "DecoderConfig", "Topology", "step_size",
    "NNCError", "BitstreamError", "TruncatedBitstreamError", "LimitExceededError", "UnsupportedFeatureError",
    "ConfigError", "InputError", "ModelFormatError", "ConformanceError", "UpdateStateError",
]


def __getattr__(name):
    # heavier or later-built parts load on first use
    if name in ("UpdateEncoder", "UpdateDecoder"):
        from . import incremental
        return getattr(incremental, name)
    if name == "inspect":
        from .inspect import inspect
        return inspect
    if name == "check":
        from .conformance.checker import check
        return check
    if name == "converters":  # model files <-> tensors (nnc.converters.from_torch, load_model, ...)
        import importlib
        return importlib.import_module(".converters", __name__)
    raise AttributeError(f"module 'nnc' has no attribute {name!r}")
