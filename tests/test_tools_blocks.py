"""NNR_PT_BLOCK NDUs: nnc writes them (nnc.blocks, BN folding) and decodes them (coding order §1.10.2);
the reference decodes nnc's block streams to the same arrays."""
import numpy as np
import pytest

import nnc
from nnc.coding.ndu import block_members
from nnc.blocks import encode_blocks, fold_bn


def _layer(seed=0):
    r = np.random.default_rng(seed)
    return dict(W=(r.normal(size=(16, 8, 3, 3)) * 0.1).astype("f4"), b=(r.normal(size=16) * 0.1).astype("f4"),
                gamma=r.uniform(0.5, 1.5, 16).astype("f4"), beta=(r.normal(size=16) * 0.1).astype("f4"),
                mean=(r.normal(size=16) * 0.1).astype("f4"), var=r.uniform(0.5, 2, 16).astype("f4"))


def test_block_member_order():
    # LS + BN + BI: names [w, ls, beta, gamma, mean, var, bias], coding order indices [1, 6, 2, 3, 4, 5, 0]
    assert [p for _, p in block_members(2 | 4 | 8)] == [1, 6, 2, 3, 4, 5, 0]
    assert [r for r, _ in block_members(0)] == ["weight"]


def _streams():
    L = _layer()
    w, ls, bias = fold_bn(L["W"], L["b"], L["gamma"], L["beta"], L["mean"], L["var"])
    folded = {"conv.weight": w, "conv.ls": ls, "conv.bias": bias, "fc.weight": np.ones((3, 5), "f4")}
    bn = {"c.weight": L["W"], "c.beta": L["beta"], "c.gamma": L["gamma"], "c.mean": L["mean"], "c.var": L["var"]}
    cfg = nnc.EncoderConfig(qp=-40)
    return [
        (folded, encode_blocks([{"weight": "conv.weight", "ls": "conv.ls", "bias": "conv.bias"}], folded, cfg)),
        (bn, encode_blocks([{"weight": "c.weight", "bn.beta": "c.beta", "bn.gamma": "c.gamma", "bn.mean": "c.mean",
                             "bn.var": "c.var"}], bn, cfg.replace(dq=False, scan_order=1, row_skipping=False))),
    ]


def test_fold_bn_matches_batch_norm():
    L = _layer()
    w, ls, bias = fold_bn(L["W"], L["b"], L["gamma"], L["beta"], L["mean"], L["var"])
    y = np.random.default_rng(1).normal(size=16).astype("f4")   # a conv output channel vector
    ref = (y + L["b"] - L["mean"]) / np.sqrt(L["var"] + 1e-5) * L["gamma"] + L["beta"]
    assert np.allclose(ls * y + bias, ref, atol=1e-5)


def test_block_streams_decode():
    for tensors, data in _streams():
        kinds = [u.body.nnr_compressed_data_unit_payload_type for u in nnc.bitstream.parse(data)
                 if u.nnr_unit_type == nnc.bitstream.UnitType.NNR_NDU]
        assert nnc.bitstream.PayloadType.NNR_PT_BLOCK in kinds
        got = nnc.decode(data)
        assert set(got) == set(tensors)
        for k, v in tensors.items():
            assert np.abs(got[k] - v).max() < 0.01, k


@pytest.mark.reference
def test_reference_decodes_nnc_blocks_identically(reference):
    streams = _streams()
    for (tensors, data), theirs in zip(streams, reference.decode_many([d for _, d in streams])):
        ours = nnc.decode(data)
        assert set(theirs) == set(ours)
        for k in ours:
            assert np.asarray(theirs[k], ours[k].dtype).tobytes() == ours[k].tobytes(), k


def test_inspect_labels_every_block_member_with_its_own_levels():
    """nnc.inspect / `nnc info` on a BLOCK NDU with weight, bias and batch norm: each member's QP and level
    statistics belong to that member (the describer once assumed element-list order while the block codes the
    bias after the BN vectors, so it showed levels under other members' names)."""
    L = _layer(3)
    t = {"c.weight": L["W"], "c.bias": L["b"] * 50, "c.beta": L["beta"], "c.gamma": L["gamma"] * 3,
         "c.mean": L["mean"], "c.var": L["var"] * 7}
    roles = {"weight": "c.weight", "bias": "c.bias", "bn.beta": "c.beta", "bn.gamma": "c.gamma",
             "bn.mean": "c.mean", "bn.var": "c.var"}
    data = encode_blocks([roles], t, nnc.EncoderConfig(qp=-40, dq=False))
    details = nnc.decode_model(data).details
    described = {ti.name: ti for u in nnc.inspect(data).units for ti in u.tensors}
    assert set(described) == set(t)
    for name, ti in described.items():
        q = details[name].levels
        assert list(ti.shape) == list(q.shape), name
        assert (ti.min_level, ti.max_level, ti.nonzero) == (int(q.min()), int(q.max()), int(np.count_nonzero(q))), \
            name
        assert ti.qp == details[name].qp, name
