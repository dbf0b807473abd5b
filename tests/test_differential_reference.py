"""Randomised differential test against NNCodec 2.1.3 in both directions.

For at least 200 random tensor dicts (shapes (1,), 1-D, 2-D, 4-D conv kernels; all-zero, constant, huge dynamic
range, 90%-sparse, denormals; QP -50..-20; DQ on and off):
  * nnc encodes, the reference decodes: identical arrays to nnc's own decode;
  * the reference encodes, nnc decodes: identical arrays to the reference's own decode;
  * and nnc's bitstream is byte-identical to the reference's.
"""
import numpy as np
import pytest

import nnc

N_CASES = 200


def _random_tensor(rng, kind, shape):
    n = int(np.prod(shape))
    if kind == "gauss":
        x = rng.standard_normal(n) * rng.choice([1e-3, 0.02, 0.1, 1.0])
    elif kind == "zero":
        x = np.zeros(n)
    elif kind == "const":
        x = np.full(n, rng.uniform(-2, 2))
    elif kind == "huge_range":
        x = rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 3, size=n)
    elif kind == "sparse":
        x = rng.standard_normal(n) * 0.05
        x[rng.random(n) < 0.9] = 0
        if len(shape) > 1 and shape[0] > 2:  # some whole zero rows for row skipping
            x = x.reshape(shape[0], -1)
            x[rng.choice(shape[0], size=shape[0] // 3, replace=False)] = 0
    elif kind == "denormal":
        x = rng.standard_normal(n) * 1e-39
        x[::3] = rng.standard_normal(len(x[::3])) * 0.01
    else:
        raise AssertionError(kind)
    return x.astype(np.float32).reshape(shape)


def _random_shape(rng):
    r = rng.integers(0, 5)
    if r == 0:
        return (1,)
    if r == 1:
        return (int(rng.integers(2, 300)),)
    if r == 2:
        return (int(rng.integers(1, 70)), int(rng.integers(1, 90)))
    if r == 3:
        return (int(rng.integers(1, 24)), int(rng.integers(1, 12)), 3, 3)
    return (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 1, 1)


def make_cases(seed=12345, n=N_CASES):
    rng = np.random.default_rng(seed)
    kinds = ["gauss", "zero", "const", "huge_range", "sparse", "denormal"]
    cases = []
    for i in range(n):
        tensors = {}
        for j in range(int(rng.integers(1, 4))):
            shape = _random_shape(rng)
            tensors[f"layer{j}.{'weight' if len(shape) > 1 else 'bias'}"] = _random_tensor(
                rng, kinds[(i + j) % len(kinds)], shape)
        settings = {"qp": int(rng.integers(-50, -19)), "qp_density": 2, "nonweight_qp": int(rng.integers(-80, -40)),
                    "dq": bool(i % 2), "row_skipping": bool(rng.random() < 0.7), "param_opt": bool(rng.random() < 0.8)}
        cases.append((tensors, settings))
    return cases


def _cfg(s):
    return nnc.EncoderConfig(qp=s["qp"], qp_density=s["qp_density"], nonweight_qp=s["nonweight_qp"], dq=s["dq"],
                             row_skipping=s["row_skipping"], param_opt=s["param_opt"])


def _same(a, b):
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                      and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.reference
def test_random_dicts_interoperate_both_ways(reference):
    _interoperate(reference, make_cases())


@pytest.mark.slow
@pytest.mark.reference
def test_more_random_dicts_interoperate_both_ways(reference):
    # another seed and 15x the cases (about 20 s)
    _interoperate(reference, make_cases(seed=2026, n=3000))


def _interoperate(reference, cases):
    ours = [nnc.encode(t, _cfg(s)) for t, s in cases]
    theirs = reference.encode_many(cases)
    ref_dec_of_ours = reference.decode_many(ours)
    ref_dec_of_theirs = reference.decode_many(theirs)
    identical = 0
    failures = []
    for i, ((t, s), a, b, ra, rb) in enumerate(zip(cases, ours, theirs, ref_dec_of_ours, ref_dec_of_theirs)):
        nnc_of_ours = nnc.decode(a)
        nnc_of_theirs = nnc.decode(b)
        if not _same(ra, nnc_of_ours):
            failures.append(f"case {i}: reference decodes nnc's stream differently ({s})")
        if not _same(rb, nnc_of_theirs):
            failures.append(f"case {i}: nnc decodes the reference's stream differently ({s})")
        identical += a == b
    print(f"\nbyte-identical bitstreams: {identical}/{len(cases)}")
    assert not failures, "\n".join(failures[:20])
    assert identical == len(cases)
