"""nnc.fl.clustered: the CFL bi-partition, the split rule, nnc-coded updates, the in-process loop."""
import numpy as np
import pytest

import nnc
from nnc.fl.clustered import CFLConfig, ClusterServer
from nnc.fl.clustering import max_cross_similarity, optimal_bipartition, pairwise_cosine
from nnc.fl.codecs import UpdateCodec
from nnc.fl.sim import simulate_cfl


def _clustered_updates(sizes=(4, 3), dim=50, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres[1] = -centres[0] + 0.2 * rng.standard_normal(dim)           # incongruent directions
    ups, truth = [], []
    for g, n in enumerate(sizes):
        for _ in range(n):
            ups.append(centres[g] + noise * rng.standard_normal(dim))
            truth.append(g)
    return ups, np.array(truth)


@pytest.mark.parametrize("method", ["exact", "exhaustive", "complete"])
def test_bipartition_recovers_known_clusters(method):
    ups, truth = _clustered_updates()
    perm = np.random.default_rng(1).permutation(len(ups))          # shuffled order
    S = pairwise_cosine([ups[i] for i in perm])
    c1, c2 = optimal_bipartition(S, method)
    got = {frozenset(perm[c1].tolist()), frozenset(perm[c2].tolist())}
    assert got == {frozenset(np.flatnonzero(truth == 0).tolist()), frozenset(np.flatnonzero(truth == 1).tolist())}
    assert max_cross_similarity(S, c1, c2) < 0


def test_exact_bipartition_is_optimal_on_random_matrices():
    rng = np.random.default_rng(3)
    for n in range(2, 9):
        for _ in range(10):
            S = pairwise_cosine(list(rng.standard_normal((n, 6))))
            e = optimal_bipartition(S, "exact")
            x = optimal_bipartition(S, "exhaustive")
            assert np.isclose(max_cross_similarity(S, *e), max_cross_similarity(S, *x))
            assert sorted(e[0] + e[1]) == list(range(n)) and e[0] and e[1]


def test_split_rule_needs_small_mean_and_large_max():
    base = {"w": np.zeros((2, 3), np.float32)}
    a = {"w": np.ones((2, 3), np.float32)}
    b = {"w": -np.ones((2, 3), np.float32)}
    ups = {0: (a, 1), 1: (a, 1), 2: (b, 1), 3: (b, 1)}
    srv = ClusterServer(base, [0, 1, 2, 3], CFLConfig(eps1=0.1, eps2=1.0, warmup_rounds=0))
    info = srv.step(1, ups)
    assert info["splits"] == [([0, 1], [2, 3])]
    assert srv.clusters == [[0, 1], [2, 3]]
    # inside each cluster the updates agree (large mean): no further split; models move apart
    srv.step(2, ups)
    assert len(srv.clusters) == 2
    assert srv.model_for(0)["w"].mean() > 0 > srv.model_for(2)["w"].mean()
    # eps2 not reached, warm-up, or clustering off: no split
    for cfg in (CFLConfig(eps1=0.1, eps2=10.0, warmup_rounds=0), CFLConfig(eps1=0.1, eps2=1.0, warmup_rounds=5),
                CFLConfig(eps1=0.1, eps2=1.0, warmup_rounds=0, clustering=False),
                CFLConfig(eps1=0.1, eps2=1.0, warmup_rounds=0, max_cross_sim=-1.5)):
        s = ClusterServer(base, [0, 1, 2, 3], cfg)
        s.step(1, ups)
        assert len(s.clusters) == 1


def test_updates_travel_as_nnc_bitstreams():
    rng = np.random.default_rng(0)
    d = {"fc.weight": (0.01 * rng.standard_normal((16, 8))).astype(np.float32), "fc.bias": np.zeros(16, np.float32)}
    codec = UpdateCodec(qp=-40)
    payload = codec.encode(d)
    assert isinstance(payload, bytes) and codec.nbytes(payload) == len(payload)
    assert set(nnc.decode(payload)) == set(d)
    out = codec.decode(payload)
    assert np.abs(out["fc.weight"] - d["fc.weight"]).max() <= 2 * float(nnc.step_size(-40, 2))
    raw = UpdateCodec(qp=None)
    data = raw.encode(d)          # always bytes, whatever the setting (issue 18: no flag-dependent return type)
    assert isinstance(data, bytes) and raw.nbytes(data) == len(data) == sum(v.nbytes for v in d.values())
    back = raw.decode(data, d)
    assert all(np.array_equal(back[k], d[k]) for k in d)


def test_simulated_cfl_separates_permuted_label_clients():
    pytest.importorskip("sklearn")
    from benchmarks.cfl import make_clients  # noqa: F401 - also checks the benchmark imports
    from nnc.fl.sim import client_rng, init_mlp, load_digits_data, predict, train_local
    data = load_digits_data()
    xtr, ytr, xte, yte = data
    specs = make_clients("label_flip", data, 12, 0)
    base = init_mlp(64, 10, 32, 0)

    def train_fn(c, model, r):
        s = specs[c]
        x, y = xtr[s["idx"]], s["labels"][ytr[s["idx"]]]
        return train_local(model, x, y, epochs=1, lr=0.1, rng=client_rng(0, r, c)), len(x), None

    def eval_fn(c, model):
        return float((predict(model, xte) == specs[c]["labels"][yte]).mean())

    cfg = CFLConfig(eps1=0.15, eps2=0.2, warmup_rounds=8, max_cross_sim=0.05)
    cfl = simulate_cfl(base, specs, config=cfg, rounds=14, train_fn=train_fn, eval_fn=eval_fn)
    fed = simulate_cfl(base, specs, config=cfg.replace(clustering=False), rounds=14, train_fn=train_fn,
                       eval_fn=eval_fn)
    assert sorted(map(sorted, cfl.clusters[-1])) == [list(range(9)), [9, 10, 11]]
    assert cfl.accuracy[-1] > fed.accuracy[-1] + 0.05
    assert all(u > 0 for u in cfl.up_bytes) and cfl.up_bytes[0] < cfl.down_bytes[0]


def test_models_with_a_0d_tensor_keep_their_shapes():
    # NNC codes 0-d tensors (BatchNorm's num_batches_tracked) with shape (1,); the cluster models must not
    # turn into (1,) arrays, which load_state_dict would refuse
    import numpy as np

    from nnc.fl.clustered import CFLConfig
    from nnc.fl.sim import simulate_cfl

    base = {"w": np.zeros((4, 4), np.float32), "bn.num_batches_tracked": np.array(0.0, np.float32)}

    def train(c, model, r):
        out = {k: v.copy() for k, v in model.items()}
        out["w"] = out["w"] + 0.1 * (c + 1)
        out["bn.num_batches_tracked"] = model["bn.num_batches_tracked"] + 4
        return out, 10, None

    res = simulate_cfl(base, {0: None, 1: None}, config=CFLConfig(clustering=False), rounds=3, train_fn=train,
                       eval_fn=lambda c, m: float(m["bn.num_batches_tracked"].shape == ()))
    assert res.accuracy == [1.0, 1.0, 1.0, 1.0]
