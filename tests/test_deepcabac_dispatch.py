"""The SIMD builds chosen at run time give exactly what the portable builds give.

* The AVX2 parameter-optimisation pass (``NNC_DISABLE_AVX2=1`` forces the portable SSE2 + scalar pass): a
  child process encodes the same sessions with each, the payloads must be byte-identical.
* The AVX-512 and AVX2 forward passes of the DQ trellis (``NNC_DISABLE_AVX512=1`` falls back to the AVX2
  pass, adding ``NNC_DISABLE_AVX2=1`` to the scalar one): the quantized levels must be identical.
On a CPU without the instruction set both runs use the portable code (the test then only checks
determinism), which the skip reason reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from nnc.deepcabac import EncodeOptions, TensorCoding, encode_payload, quantize

    rng = np.random.default_rng(2024)
    digests = []
    for case in range(24):
        h = int(rng.integers(1, 300)); w = int(rng.integers(1, 400))
        dq = bool(case % 2)
        scale = float(rng.choice([0.3, 3.0, 40.0]))
        x = (rng.standard_normal((h, w)) * scale).astype(np.float32)
        if case % 5 == 0:
            x[rng.random((h, w)) < 0.9] = 0  # sparse; with row skipping below
        scan = int(case % 4)
        q = quantize(x, 0.5, dq=dq, scan_order=scan)
        kw = {}
        opts = EncodeOptions(row_skipping=case % 5 == 0)
        if case % 3 == 0:  # TCA and HDSP contexts
            kw = dict(parent_present=True, tca_base=np.round(rng.standard_normal((h, w)) * 2).astype(np.int32),
                      hdsp_history=rng.random((h, w)) < 0.3)
            opts = EncodeOptions(row_skipping=opts.row_skipping, hdsp=True)
        c = TensorCoding(shape=(h, w), dq=dq, scan_order=scan, unary_length=int(rng.integers(1, 14)), **kw)
        data, _ = encode_payload([(q, c, -32, opts)])
        digests.append(hashlib.sha256(data).hexdigest())
    # one tensor longer than the 16384-bin flush interval of the rate accumulators
    big = np.round(rng.standard_normal((300, 700)) * 6).astype(np.int32)
    data, _ = encode_payload([(big, TensorCoding(shape=big.shape), 0, EncodeOptions())])
    digests.append(hashlib.sha256(data).hexdigest())
    print(" ".join(digests))
    """
)


QUANT_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from nnc.deepcabac import quantize

    rng = np.random.default_rng(7)
    digests = []
    for case in range(60):
        h = int(rng.integers(1, 120)); w = int(rng.integers(1, 300))
        x = (rng.standard_normal((h, w)) * rng.choice([1e-4, 0.01, 1.0, 300.0])).astype(np.float32)
        x[rng.random((h, w)) < 0.3] = 0
        if case % 7 == 0:
            x[rng.random((h, w)) < 0.5] *= -1e-30  # denormal-sized and negative-zero values
        q = quantize(x, float(rng.choice([0.001, 0.0039, 0.05, 1.0])), dq=True, scan_order=int(case % 5))
        digests.append(hashlib.sha256(q.tobytes()).hexdigest())
    print(" ".join(digests))
    """
)


def _run(script: str, *disable: str) -> list[str]:
    env = dict(os.environ)
    env.pop("NNC_DISABLE_AVX2", None)
    env.pop("NNC_DISABLE_AVX512", None)
    for name in disable:
        env[name] = "1"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return f" {flag}" in f.read()
    except OSError:
        return False


def test_avx2_and_portable_parameter_optimisation_give_identical_payloads():
    fast = _run(SCRIPT)
    portable = _run(SCRIPT, "NNC_DISABLE_AVX2")
    assert len(fast) == len(portable) == 25
    assert fast == portable
    if not _cpu_has("avx2"):
        pytest.skip("this CPU has no AVX2: both runs used the portable pass (only determinism was checked)")


def test_avx512_avx2_and_scalar_dq_trellis_give_identical_levels():
    avx512 = _run(QUANT_SCRIPT)
    avx2 = _run(QUANT_SCRIPT, "NNC_DISABLE_AVX512")
    scalar = _run(QUANT_SCRIPT, "NNC_DISABLE_AVX512", "NNC_DISABLE_AVX2")
    assert len(avx512) == len(avx2) == len(scalar) == 60
    assert avx512 == scalar
    assert avx2 == scalar
    missing = [f for f in ("avx2", "avx512f") if not _cpu_has(f)]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: those runs used a fallback (only determinism was checked)")
