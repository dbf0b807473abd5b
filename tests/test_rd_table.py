"""Rate tables built once and reused, QP ranges that adapt, public bits accounting, sensitivity files on the
command line (issue 20, item 4)."""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

import nnc
from nnc.coding.tools import ratecontrol as rc


def _model(seed=0):
    rng = np.random.default_rng(seed)
    t = {f"l{i}.weight": (rng.standard_normal((256, 192)) * (0.02 * (i + 1))).astype("f4") for i in range(4)}
    t.update({f"l{i}.bias": (rng.standard_normal(256) * 0.01).astype("f4") for i in range(4)})
    return t


def test_second_budget_reuses_the_table():
    t = _model(1)
    rc._TABLE_CACHE.clear()
    t0 = time.perf_counter()
    q1 = rc.allocate_qps(t, nnc.EncoderConfig.for_size(3.0))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    q2 = rc.allocate_qps(t, nnc.EncoderConfig.for_size(5.0))
    second = time.perf_counter() - t0
    assert second < 0.1 * first, (first, second)
    assert all(q2[k] <= q1[k] for k in q1) and any(q2[k] < q1[k] for k in q1)   # more bits: finer qps
    # a changed tensor is a different model: measured again
    t["l0.weight"] = t["l0.weight"] * 2
    t0 = time.perf_counter()
    rc.allocate_qps(t, nnc.EncoderConfig.for_size(5.0))
    assert time.perf_counter() - t0 > 3 * second


def test_table_budget_accounting_matches_the_encoder():
    t = _model(2)
    cfg = nnc.EncoderConfig(dq=False)
    table = rc.RateTable.measure(t, cfg)
    for bpp in (2.0, 4.0):
        qps = table.allocate(bpp)
        predicted = table.bits(qps)
        stream = nnc.encode(t, cfg.replace(qp_per_tensor=qps))
        units = nnc.bitstream.parse(stream)
        payload = sum(8 * len(u.payload) for u in units if u.nnr_unit_type == nnc.bitstream.UnitType.NNR_NDU)
        assert abs(predicted - payload) < 0.03 * payload, (bpp, predicted, payload)
        assert predicted <= table.budget_bits(bpp) * 1.001
        grid, bits, _ = table.table["l1.weight"]
        measured = float(bits[int(np.flatnonzero(grid == qps["l1.weight"])[0])])
        assert rc.payload_bits(t["l1.weight"], qps["l1.weight"], cfg) == measured   # 49k elements: no sampling


def test_table_extends_where_a_sensitive_tensor_is_pinned_at_its_edge():
    t = _model(3)
    cfg = nnc.EncoderConfig(dq=False)
    # a narrow table (5 qps) and one tensor 10^6 times as sensitive as the others: it wants a finer qp than
    # the table holds
    table = rc.RateTable.measure(t, cfg, weights={"l2.weight": 1e6}, points=5)
    finest = int(table.table["l2.weight"][0][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", rc.EdgeWarning)
        qps = table.allocate(4.0, max_extensions=6)
    assert qps["l2.weight"] < finest                       # extended and used
    assert "l2.weight" not in table.last_edges
    narrow = rc.RateTable.measure(t, cfg, weights={"l2.weight": 1e6}, points=5)
    with pytest.warns(rc.EdgeWarning, match="l2.weight"):
        narrow.allocate(4.0, extend=False)
    assert "l2.weight" in narrow.last_edges


def test_cli_takes_a_sensitivity_file(tmp_path, capsys):
    from nnc.cli import main
    t = _model(4)
    src = tmp_path / "m.npz"
    np.savez(src, **t)
    sens = tmp_path / "sens.json"
    rc.save_sensitivities(sens, {"l0.weight": 1000.0, "l1.weight": 0.001, "l2.weight": 1.0, "l3.weight": 1.0})
    assert rc.load_sensitivities(sens)["l0.weight"] == 1000.0
    qps = {}
    for extra in ([], ["--sensitivity", str(sens)]):
        out = tmp_path / f"m{len(extra)}.nnc"
        assert main(["encode", str(src), "-o", str(out), "--bits-per-param", "3", "--quiet", "--json"] + extra) == 0
        capsys.readouterr()
        dm = nnc.decode_model(out.read_bytes())
        qps[len(extra)] = {k: d.qp for k, d in dm.details.items()}
    assert qps[2]["l0.weight"] < qps[0]["l0.weight"] and qps[2]["l1.weight"] > qps[0]["l1.weight"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"l0.weight": -1}))
    assert main(["encode", str(src), "-o", str(tmp_path / "x.nnc"), "--bits-per-param", "3",
                 "--sensitivity", str(bad)]) != 0
    assert "sensitivity file" in capsys.readouterr().err
