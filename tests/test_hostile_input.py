"""Truncated and mutated bitstreams either decode or raise an nnc.NNCError subclass: never another
exception, a crash, or a hang."""
import signal

import numpy as np
import pytest

import nnc
from conftest import VECTORS

VECTOR_FILES = ["gauss_qp-32_dq.nnc", "sparse_qp-32_nodq_rowskip.nnc", "mtcnn_pnet_qp-38_dq.nnc"]


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def _decode_or_nncerror(data: bytes, seconds: int = 10):
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        nnc.decode(data)
        return "ok"
    except nnc.NNCError as e:
        return type(e).__name__
    except _Hang:
        pytest.fail(f"decode hung on a {len(data)}-byte input")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_every_prefix_truncation(name):
    data = (VECTORS / name).read_bytes()
    outcomes = {}
    for cut in range(len(data)):
        r = _decode_or_nncerror(data[:cut])
        outcomes[r] = outcomes.get(r, 0) + 1
    # a strict prefix of a multi-unit stream can end on a unit boundary (then it decodes fewer tensors),
    # but most cuts land inside a unit and must be reported as errors
    assert sum(v for k, v in outcomes.items() if k != "ok") > 0.9 * len(data)


def test_random_mutations():
    rng = np.random.default_rng(2026)
    blobs = [(VECTORS / n).read_bytes() for n in VECTOR_FILES]
    outcomes = {}
    for i in range(5000):
        data = bytearray(blobs[i % len(blobs)])
        for _ in range(int(rng.integers(1, 6))):
            op = rng.integers(0, 4)
            pos = int(rng.integers(0, len(data)))
            if op == 0:
                data[pos] = int(rng.integers(0, 256))
            elif op == 1:
                data[pos] ^= 1 << int(rng.integers(0, 8))
            elif op == 2:
                del data[pos:pos + int(rng.integers(1, 8))]
            else:
                data[pos:pos] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 8)), dtype=np.uint8))
        r = _decode_or_nncerror(bytes(data))
        outcomes[r] = outcomes.get(r, 0) + 1
    print("\nmutation outcomes:", outcomes)
    assert sum(outcomes.values()) == 5000
