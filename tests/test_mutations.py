"""10,000 random mutations of real bitstreams (every conformance vector under 10 kB, plus the TCA update
sequence through an UpdateDecoder that holds the first update's state): each one decodes or raises an
``nnc.NNCError`` subclass -- never another exception, a crash, a hang, or a result over the limits."""
import collections
import copy
import signal
import time

import numpy as np
import pytest

import nnc
from conftest import VECTORS

N_MUTATIONS = 10_000
LIMITS = nnc.DecoderConfig(max_tensor_elements=4 << 20, max_total_bytes=64 << 20, max_units=4096)


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def mutate(rng: np.random.Generator, blob: bytes, donors: list[bytes]) -> bytes:
    """1-8 edits: byte set, bit flip, delete, insert, duplicate a slice, splice from another vector,
    or overwrite with an 'interesting' integer (0, 0xFF.., 0x7F.., 0x80..)."""
    data = bytearray(blob)
    for _ in range(int(rng.integers(1, 9))):
        if not data:
            data = bytearray(rng.integers(0, 256, size=4, dtype=np.uint8).tobytes())
        pos = int(rng.integers(0, len(data)))
        op = int(rng.integers(0, 7))
        if op == 0:
            data[pos] = int(rng.integers(0, 256))
        elif op == 1:
            data[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            del data[pos:pos + int(rng.integers(1, 16))]
        elif op == 3:
            data[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif op == 4:
            n = int(rng.integers(1, 64))
            data[pos:pos] = data[pos:pos + n]
        elif op == 5:
            donor = donors[int(rng.integers(0, len(donors)))]
            a = int(rng.integers(0, len(donor)))
            data[pos:] = donor[a:a + int(rng.integers(1, 256))] + data[pos:]
        else:
            width = int(rng.choice([1, 2, 4]))
            val = int(rng.choice([0, 0xFF, 0x7F, 0x80])).to_bytes(1, "big") * width
            data[pos:pos + width] = val
    return bytes(data)


def _vectors():
    files = sorted(p for p in VECTORS.glob("*.nnc") if p.stat().st_size < 10_000)
    return [p.read_bytes() for p in files]


def test_random_mutations_only_nncerror_or_success():
    blobs = _vectors()
    seq = [(VECTORS / "tca_seq" / f"{i:03d}.nnc").read_bytes() for i in range(2)]
    held = nnc.UpdateDecoder(config=LIMITS)
    held.decode_update(seq[0])
    state = held.state
    donors = blobs + seq
    rng = np.random.default_rng(15938_17)
    outcomes = collections.Counter()
    slowest = 0.0
    old = signal.signal(signal.SIGALRM, _on_alarm)
    t_all = time.perf_counter()
    try:
        for i in range(N_MUTATIONS):
            update = i % 10 == 9                 # every 10th input: an update through the stateful decoder
            src = seq[1] if update else blobs[i % len(blobs)]
            data = mutate(rng, src, donors)
            signal.alarm(10)
            t = time.perf_counter()
            try:
                if update:
                    dec = nnc.UpdateDecoder(config=LIMITS)
                    dec.state = copy.deepcopy(state)
                    out = dec.decode_update(data)
                else:
                    out = nnc.decode(data, LIMITS)
                assert sum(a.nbytes for a in out.values()) <= LIMITS.max_total_bytes
                outcomes["ok"] += 1
            except nnc.NNCError as e:
                outcomes[type(e).__name__] += 1
                assert str(e)                    # a message, and it can be formatted
            except _Hang:
                pytest.fail(f"mutation {i} hung ({len(data)} bytes): {data[:64].hex()}...")
            except Exception as e:               # noqa: BLE001 - this is the finding
                pytest.fail(f"mutation {i} raised {type(e).__name__}: {e}; input hex: {data.hex()}")
            finally:
                signal.alarm(0)
            slowest = max(slowest, time.perf_counter() - t)
    finally:
        signal.signal(signal.SIGALRM, old)
    print(f"\n{N_MUTATIONS} mutations in {time.perf_counter() - t_all:.1f} s, slowest {slowest * 1e3:.1f} ms:",
          dict(outcomes.most_common()))
    assert sum(outcomes.values()) == N_MUTATIONS
    assert outcomes["ok"] > 0 and len(outcomes) > 3     # the mutator reaches both outcomes and many error types
