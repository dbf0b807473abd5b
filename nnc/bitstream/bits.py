"""Bit-level reader and writer for the NNR high-level syntax (spec §0).

Everything is MSB first. The reader works on a ``memoryview`` of the whole bitstream and keeps an absolute
bit position, so every error it raises carries the byte offset in the file. It never copies more than the
few bytes a read needs; payloads are sliced by the caller, not read through this class.
"""
from __future__ import annotations

import struct

import numpy as np

from ..errors import BitstreamError, ConfigError, TruncatedBitstreamError

__all__ = ["BitReader", "BitWriter", "Float32", "MAX_UE_PREFIX_BITS", "ie_to_ue", "ue_to_ie"]

#: Longest accepted run of leading zero bits in a ue(k) code. 32 zeros already give values above 2^32,
#: far more than any NNR field can meaningfully hold; anything longer is treated as corrupt data.
MAX_UE_PREFIX_BITS = 32

_ST_SEARCH_CHUNK = 256

#: Bits examined per window by :meth:`BitReader.eg_records` (bounds its temporary memory to a few MB).
_EG_WINDOW_BITS = 1 << 16


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
        self.buf = buf if type(buf) is bytes or isinstance(buf, memoryview) else memoryview(buf)
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

    def eg_records(self, n: int, fixed_bits: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Read ``n`` records of ``u(fixed_bits)`` followed by ``ue(k)`` in bulk (numpy, no per-bit Python work).

        Returns ``(fixed, values)`` as int64 arrays. Used for long arrays of exp-Golomb codes (codebook deltas,
        entry points): the per-element cost is a few tens of nanoseconds, so the parser's work stays bounded
        per input byte however densely a hostile header packs its codes. Errors are the ones :meth:`ue` raises
        (prefix longer than ``MAX_UE_PREFIX_BITS``, code running past the end), at the offending code."""
        fixed = np.empty(n, np.int64)
        values = np.empty(n, np.int64)
        done = 0
        max_len = fixed_bits + 2 * MAX_UE_PREFIX_BITS + 1 + k       # longest acceptable record
        while done < n:
            b0 = self.pos >> 3
            # enough bits for the remaining records at their shortest (most hostile) length, within a window
            need = ((n - done) * (fixed_bits + 1 + k) + max_len + 8 + 63) >> 3
            b1 = min((self.end + 7) >> 3, b0 + min(_EG_WINDOW_BITS >> 3, need))
            raw = np.frombuffer(self.buf[b0:b1], np.uint8)
            bits = np.unpackbits(raw)[: self.end - (b0 << 3)]
            at_end = (b0 << 3) + len(bits) >= self.end
            nb = len(bits)
            # next_one[p]: index of the first 1-bit at or after p (nb when none)
            pos_if_one = np.where(bits.astype(bool), np.arange(nb, dtype=np.int32), np.int32(nb))
            next_one = np.empty(nb + 1, np.int32)
            next_one[nb] = nb
            next_one[:nb] = np.minimum.accumulate(pos_if_one[::-1])[::-1]
            p = self.pos - (b0 << 3)
            safe = nb if at_end else nb - max_len                    # a record starting before safe fits
            q = np.arange(nb + 1, dtype=np.int32) + np.int32(fixed_bits)
            np.minimum(q, nb, out=q)
            zeros = next_one[q] - q
            # jump[p]: where the record starting at p ends (clipped to the sink nb). Every jump goes forward,
            # so the records are the chain p, jump[p], jump[jump[p]], ...: found by pointer doubling
            # (step 2^j of the chain from steps 0..2^j-1), O(window log window) in numpy.
            jump = np.minimum(q + 2 * zeros + (1 + k), nb)
            chain = np.array([p], np.int32)
            want = n - done
            while len(chain) < want and chain[-1] < min(safe, nb):
                chain = np.concatenate([chain, jump[chain]])
                jump = jump[jump]
            starts = chain[chain < safe][:want].astype(np.int64)
            if not len(starts):
                p0 = self.pos
                if at_end:
                    self.pos = self.end
                    raise TruncatedBitstreamError(f"ue({k}) code runs past the end of the data", byte_offset=p0 >> 3)
                raise BitstreamError(f"ue({k}) code has more than {MAX_UE_PREFIX_BITS} leading zero bits",
                                     byte_offset=p0 >> 3)
            s = starts
            z = zeros[s].astype(np.int64)      # zeros is indexed by record start
            bad = np.flatnonzero(z > MAX_UE_PREFIX_BITS)
            if bad.size:
                at = int(s[bad[0]]) + (b0 << 3)
                raise BitstreamError(f"ue({k}) code has more than {MAX_UE_PREFIX_BITS} leading zero bits",
                                     byte_offset=at >> 3)
            ends = s + fixed_bits + 2 * z + 1 + k
            over = np.flatnonzero(ends > nb)
            if over.size:
                at = int(s[over[0]]) + (b0 << 3)
                self.pos = self.end
                raise TruncatedBitstreamError(f"ue({k}) code runs past the end of the data", byte_offset=at >> 3)
            m = len(s)
            words = _words(raw)
            fixed[done:done + m] = _bit_fields(words, s, fixed_bits) if fixed_bits else 0
            values[done:done + m] = (((np.int64(1) << z) - 1) << k) + _bit_fields(words, s + fixed_bits + z + 1,
                                                                                  z + k)
            done += m
            self.pos = int(ends[-1]) + (b0 << 3)
        return fixed, values

    def ue_array(self, n: int, k: int) -> np.ndarray:
        """``n`` consecutive ue(k) codes (see :meth:`eg_records`)."""
        if n <= 0:
            return np.empty(0, np.int64)
        return self.eg_records(n, 0, k)[1]

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

    def st_array(self, n: int, raw: bool = False) -> list:
        """``n`` consecutive st strings (bytes with ``raw=True``), found with ``bytes.find`` per string."""
        if self.pos & 7:
            raise BitstreamError("st string does not start on a byte boundary", byte_offset=self.pos >> 3)
        out: list = []
        pos = self.pos >> 3
        stop = self.end >> 3
        chunk = 1 << 16
        while len(out) < n:
            if pos >= stop:
                raise TruncatedBitstreamError("st string has no NUL terminator before the end of the unit",
                                              byte_offset=pos)
            data = bytes(self.buf[pos:min(stop, pos + chunk)])
            i = 0
            while len(out) < n:
                j = data.find(0, i)
                if j < 0:
                    break
                s = data[i:j]
                if not raw:
                    try:
                        s = s.decode("utf-8", "strict")
                    except UnicodeDecodeError as exc:
                        raise BitstreamError(f"st string is not valid UTF-8 ({exc.reason} at string byte "
                                             f"{exc.start})", byte_offset=pos + i + exc.start) from None
                out.append(s)
                i = j + 1
            if i == 0:
                if pos + chunk >= stop:
                    raise TruncatedBitstreamError("st string has no NUL terminator before the end of the unit",
                                                  byte_offset=pos)
                chunk *= 4
            pos += i
        self.pos = pos << 3
        return out

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


def _words(raw: np.ndarray) -> np.ndarray:
    """For every byte offset b of ``raw``, the big-endian 64-bit word of bytes b..b+7 (zero padded)."""
    n = len(raw)
    padded = np.zeros(n + 16, np.uint8)
    padded[:n] = raw
    words = np.empty(n + 1, np.uint64)
    buf = padded.tobytes()
    for j in range(8):
        view = np.frombuffer(buf, ">u8", count=(n + 16 - j) // 8, offset=j)
        dst = words[j::8]
        dst[:] = view[:len(dst)]
    return words


def _bit_fields(words: np.ndarray, starts: np.ndarray, widths) -> np.ndarray:
    """Big-endian bit fields of ``widths`` (0..56) bits at bit offsets ``starts`` (``words`` from :func:`_words`)."""
    widths = np.broadcast_to(np.asarray(widths, np.int64), starts.shape)
    word = words[starts >> 3] << (starts & 7).astype(np.uint64)       # drop the bits before the field
    w = np.maximum(widths, 1).astype(np.uint64)
    out = (word >> (np.uint64(64) - w)).astype(np.int64)
    out[widths == 0] = 0
    return out


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
