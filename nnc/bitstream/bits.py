"""Bit-level reader and writer for the NNR high-level syntax (spec §0).

Everything is MSB first. The reader works on a ``memoryview`` of the whole bitstream and keeps an absolute
bit position, so every error it raises carries the byte offset in the file. It never copies more than the
few bytes a read needs; payloads are sliced by the caller, not read through this class.
"""
from __future__ import annotations

import struct

from ..errors import BitstreamError, ConfigError, TruncatedBitstreamError

__all__ = ["BitReader", "BitWriter", "Float32", "MAX_UE_PREFIX_BITS", "ie_to_ue", "ue_to_ie"]

#: Longest accepted run of leading zero bits in a ue(k) code. 32 zeros already give values above 2^32,
#: far more than any NNR field can meaningfully hold; anything longer is treated as corrupt data.
MAX_UE_PREFIX_BITS = 32

_ST_SEARCH_CHUNK = 256


class Float32(float):
    """A float read from an ``flt`` field. ``bits`` keeps the exact 32-bit pattern (NaN payloads included),
    so re-serialising gives the same bytes even where a Python float could not represent them."""

    bits: int

    def __new__(cls, value: float = 0.0, bits: int | None = None):
        if bits is None:
            bits = int.from_bytes(struct.pack("<f", value), "little")
            value = struct.unpack("<f", struct.pack("<f", value))[0]
        obj = super().__new__(cls, value)
        obj.bits = bits
        return obj

    @classmethod
    def from_bits(cls, bits: int) -> "Float32":
        return cls(struct.unpack("<f", bits.to_bytes(4, "little"))[0], bits)


def ue_to_ie(m: int) -> int:
    """Inverse ie mapping: odd m -> (m+1)/2, even m -> -m/2."""
    return (m + 1) >> 1 if m & 1 else -(m >> 1)


def ie_to_ue(v: int) -> int:
    """ie mapping: v > 0 -> 2v-1, v <= 0 -> -2v."""
    return 2 * v - 1 if v > 0 else -2 * v


class BitReader:
    """Reads HLS descriptors from ``buf[start:end]`` (byte offsets into the whole bitstream)."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, start: int = 0, end: int | None = None):
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)
        self.pos = start * 8
        self.end = (len(self.buf) if end is None else end) * 8

    # -- helpers -------------------------------------------------------------------------------------
    @property
    def byte_pos(self) -> int:
        return self.pos >> 3

    def bits_left(self) -> int:
        return self.end - self.pos

    def aligned(self) -> bool:
        return not self.pos & 7

    def _truncated(self, what: str, need: int):
        return TruncatedBitstreamError(
            f"{what} needs {need} bit(s) but only {self.end - self.pos} remain",
            byte_offset=self.pos >> 3)

    # -- descriptors ---------------------------------------------------------------------------------
    def u(self, n: int) -> int:
        if n <= 0:
            return 0
        pos = self.pos
        stop = pos + n
        if stop > self.end:
            raise self._truncated(f"u({n})", n)
        b0 = pos >> 3
        b1 = (stop + 7) >> 3
        v = int.from_bytes(self.buf[b0:b1], "big")
        self.pos = stop
        return (v >> ((b1 << 3) - stop)) & ((1 << n) - 1)

    def i(self, n: int) -> int:
        v = self.u(n)
        return v - (1 << n) if v >> (n - 1) else v

    def ue(self, k: int) -> int:
        start = self.pos
        zeros = 0
        buf = self.buf
        pos = self.pos
        end = self.end
        while True:
            if pos >= end:
                self.pos = pos
                raise TruncatedBitstreamError(
                    f"ue({k}) code runs past the end of the data", byte_offset=start >> 3)
            bit = (buf[pos >> 3] >> (7 - (pos & 7))) & 1
            pos += 1
            if bit:
                break
            zeros += 1
            if zeros > MAX_UE_PREFIX_BITS:
                raise BitstreamError(
                    f"ue({k}) code has more than {MAX_UE_PREFIX_BITS} leading zero bits", byte_offset=start >> 3)
        self.pos = pos
        value = ((1 << zeros) - 1) << k
        k += zeros
        if k:
            value += self.u(k)
        return value

    def ie(self, k: int) -> int:
        return ue_to_ie(self.ue(k))

    def flt(self) -> Float32:
        raw = self.u(32)  # four u(8), least significant byte first
        return Float32.from_bits(int.from_bytes(raw.to_bytes(4, "big"), "little"))

    def byte_alignment(self) -> None:
        self.u(1)  # the reference reads and ignores this bit
        self.pos = (self.pos + 7) & ~7

    def st_bytes(self) -> bytes:
        """A NUL-terminated byte string (without the NUL); must start byte aligned."""
        if self.pos & 7:
            raise BitstreamError("st string does not start on a byte boundary", byte_offset=self.pos >> 3)
        start = self.pos >> 3
        stop = self.end >> 3
        probe = start
        chunk = _ST_SEARCH_CHUNK
        while probe < stop:
            hi = min(stop, probe + chunk)
            idx = bytes(self.buf[probe:hi]).find(0)
            if idx >= 0:
                nul = probe + idx
                self.pos = (nul + 1) << 3
                return bytes(self.buf[start:nul])
            probe = hi
            chunk *= 4
        raise TruncatedBitstreamError("st string has no NUL terminator before the end of the unit",
                                      byte_offset=start)

    def rest_bytes(self) -> bytes:
        """All remaining bytes of the unit; must start byte aligned."""
        if self.pos & 7:
            raise BitstreamError("byte payload does not start on a byte boundary", byte_offset=self.pos >> 3)
        start, stop = self.pos >> 3, self.end >> 3
        self.pos = self.end
        return bytes(self.buf[start:stop])

    def st(self) -> str:
        start = self.pos >> 3
        raw = self.st_bytes()
        try:
            return raw.decode("utf-8", "strict")
        except UnicodeDecodeError as exc:
            raise BitstreamError(f"st string is not valid UTF-8 ({exc.reason} at string byte {exc.start})",
                                 byte_offset=start + exc.start, code="INVALID_UTF8") from None


class BitWriter:
    """Accumulates HLS descriptors MSB first. Value errors raise :class:`nnc.errors.ConfigError`."""

    __slots__ = ("acc", "nbits")

    def __init__(self):
        self.acc = 0
        self.nbits = 0

    def aligned(self) -> bool:
        return not self.nbits & 7

    def _put(self, n: int, v: int) -> None:
        self.acc = (self.acc << n) | v
        self.nbits += n

    @staticmethod
    def _int(v, what: str) -> int:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            if isinstance(v, bool):
                return int(v)
            raise ConfigError(f"{what}: expected an integer, got {type(v).__name__}")
        return v.__index__()

    def u(self, n: int, v) -> None:
        v = self._int(v, f"u({n})")
        if not 0 <= v < (1 << n):
            raise ConfigError(f"u({n}) value {v} out of range 0..{(1 << n) - 1}")
        self._put(n, v)

    def i(self, n: int, v) -> None:
        v = self._int(v, f"i({n})")
        lo = -(1 << (n - 1))
        if not lo <= v < -lo:
            raise ConfigError(f"i({n}) value {v} out of range {lo}..{-lo - 1}")
        self._put(n, v & ((1 << n) - 1))

    def ue(self, k: int, v) -> None:
        v = self._int(v, f"ue({k})")
        if v < 0:
            raise ConfigError(f"ue({k}) value {v} is negative")
        # prefix length p is the largest p with 2^k (2^p - 1) <= v
        p = ((v >> k) + 1).bit_length() - 1
        if p > MAX_UE_PREFIX_BITS:
            raise ConfigError(f"ue({k}) value {v} is too large to be read back")
        rest = v - (((1 << p) - 1) << k)
        self._put(p + 1, 1)  # p zero bits then the 1 bit
        if k + p:
            self._put(k + p, rest)

    def ie(self, k: int, v) -> None:
        v = self._int(v, f"ie({k})")
        self.ue(k, ie_to_ue(v))

    def flt(self, v) -> None:
        if isinstance(v, Float32):
            bits = v.bits
        else:
            try:
                bits = int.from_bytes(struct.pack("<f", float(v)), "little")
            except (TypeError, ValueError, OverflowError) as exc:
                raise ConfigError(f"flt value {v!r} is not a float32: {exc}") from None
        self._put(32, int.from_bytes(bits.to_bytes(4, "little"), "big"))

    def byte_alignment(self) -> None:
        self._put(1, 1)
        pad = -self.nbits & 7
        if pad:
            self._put(pad, 0)

    def st(self, v) -> None:
        if not self.aligned():
            raise ConfigError("st string would not start on a byte boundary")
        if isinstance(v, str):
            raw = v.encode("utf-8", "strict")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            raw = bytes(v)
        else:
            raise ConfigError(f"st value must be str or bytes, got {type(v).__name__}")
        if b"\0" in raw:
            raise ConfigError("st string must not contain a NUL byte")
        raw += b"\0"
        self._put(8 * len(raw), int.from_bytes(raw, "big"))

    def raw_bytes(self, v) -> None:
        """Bytes written as they are (no terminator); must start byte aligned."""
        if not self.aligned():
            raise ConfigError("byte payload would not start on a byte boundary")
        raw = bytes(v)
        if raw:
            self._put(8 * len(raw), int.from_bytes(raw, "big"))

    def getvalue(self) -> bytes:
        if self.nbits & 7:
            raise ConfigError("syntax structure does not end on a byte boundary")
        return self.acc.to_bytes(self.nbits >> 3, "big")
