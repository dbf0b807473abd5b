"""nnc: MPEG NNC (ISO/IEC 15938-17) neural-network coding, bit-exactly interoperable with NNCodec 2.1.3."""
from .errors import *  # noqa: F401,F403
