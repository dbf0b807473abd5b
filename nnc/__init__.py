"""nnc: MPEG NNC (ISO/IEC 15938-17) neural-network coding, bit-exactly interoperable with NNCodec 2.1.3.

One-shot functions: :func:`encode`, :func:`decode`, :func:`decode_model`, :func:`inspect`, :func:`check`.
Reusable objects for loops: :class:`Encoder`, :class:`Decoder`, :class:`UpdateEncoder`, :class:`UpdateDecoder`.
Settings: :class:`EncoderConfig`, :class:`DecoderConfig`. Errors: :class:`NNCError` and its subclasses.
"""
from .codec import DecodedModel, DecodedTensor, Decoder, Encoder, decode, decode_model, encode
from .config import DecoderConfig, EncoderConfig
from .conformance.checker import check
from .describe import inspect
from .coding.quant import step_size
from .errors import (BitstreamError, ConfigError, ConformanceError, InputError, LimitExceededError,
                     ModelFormatError, NNCError, TruncatedBitstreamError, UnsupportedFeatureError,
                     UpdateStateError)
from .incremental import UpdateDecoder, UpdateEncoder
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
    # model files <-> tensors (nnc.converters.from_torch, load_model, ...): loaded on first use, since the
    # converters bring optional dependencies (onnx, torch, safetensors) along
    if name == "converters":
        import importlib
        return importlib.import_module(".converters", __name__)
    raise AttributeError(f"module 'nnc' has no attribute {name!r}")
