"""The command line contract: flags, outputs, summaries (error paths are in test_cli_errors.py)."""
import json

import numpy as np

import nnc
from nnc.cli import main
from conftest import VECTORS, load_npz


def _without_tpl(data: bytes) -> bytes:
    from nnc import bitstream as B
    p = B.parse(data)
    return b"".join(bytes(p.data[u.offset:u.offset + u.size]) for u in p.units
                    if u.nnr_unit_type != B.NNRUnitType.NNR_TPL)


def test_encode_flags_reproduce_reference_bitstreams(tmp_path, capsys):
    # --reference-layout: byte-identical to the reference's vectors; the default adds only the tensor list in
    # the topology unit (every other unit identical)
    out = tmp_path / "pnet.nnc"
    assert main(["encode", str(VECTORS / "in_mtcnn_pnet.npz"), "-o", str(out), "--qp", "-38", "--json",
                 "--reference-layout"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.read_bytes() == (VECTORS / "mtcnn_pnet_qp-38_dq.nnc").read_bytes()
    assert summary["bitstream_bytes"] == out.stat().st_size
    assert 0 < summary["max_abs_err"] < 0.01 and summary["rel_l2"] < 0.01
    assert main(["encode", str(VECTORS / "in_mtcnn_pnet.npz"), "-o", str(tmp_path / "d.nnc"), "--qp", "-38",
                 "--quiet"]) == 0
    default = (tmp_path / "d.nnc").read_bytes()
    assert default != out.read_bytes() and _without_tpl(default) == _without_tpl(out.read_bytes())

    out2 = tmp_path / "sparse.nnc"
    assert main(["encode", str(VECTORS / "in_sparse.npz"), "-o", str(out2), "--qp", "-32", "--no-row-skipping",
                 "--quiet", "--reference-layout"]) == 0
    assert out2.read_bytes() == (VECTORS / "sparse_qp-32_dq_norowskip.nnc").read_bytes()

    out3 = tmp_path / "silero.nnc"
    assert main(["encode", str(VECTORS / "in_silero_subset.npz"), "-o", str(out3), "--qp", "-64",
                 "--qp-density", "3", "--no-verify", "--quiet", "--reference-layout"]) == 0
    assert out3.read_bytes() == (VECTORS / "silero_subset_qd3_qp-64_nnc.nnc").read_bytes()


def test_decode_writes_npz_identical_to_reference(tmp_path):
    out = tmp_path / "dec.npz"
    assert main(["decode", str(VECTORS / "gauss_qp-32_nodq.nnc"), "-o", str(out)]) == 0
    got, exp = load_npz(out), load_npz(VECTORS / "gauss_qp-32_nodq.dec.npz")
    assert list(got) == list(exp) and all(got[k].tobytes() == exp[k].tobytes() for k in exp)


def test_no_dq_and_nonweight_qp_flags(tmp_path):
    src = tmp_path / "m.npz"
    rng = np.random.default_rng(0)
    np.savez(src, w=rng.standard_normal((20, 30)).astype(np.float32), b=rng.standard_normal(20).astype(np.float32))
    out = tmp_path / "m.nnc"
    assert main(["encode", str(src), "-o", str(out), "--qp", "-30", "--no-dq", "--nonweight-qp", "-50",
                 "--quiet"]) == 0
    d = nnc.decode_model(out.read_bytes()).details
    assert d["w"].qp == -30 and d["b"].qp == -50


def test_format_flag_for_files_whose_extension_does_not_tell(tmp_path, capsys):
    import pytest

    from nnc import cli, converters

    assert tuple(cli._FORMATS) == tuple(converters.FORMATS) and cli._FORMATS == converters.FORMATS
    w = {"fc.weight": np.random.default_rng(0).standard_normal((8, 16)).astype("f4")}
    np.savez(tmp_path / "weights.npz", **w)
    (tmp_path / "weights.data").write_bytes((tmp_path / "weights.npz").read_bytes())
    assert main(["encode", str(tmp_path / "weights.data"), "-o", str(tmp_path / "a.nnc")]) == 2
    assert "--format" in capsys.readouterr().err  # the message names the flag that helps
    assert main(["encode", str(tmp_path / "weights.data"), "--format", "npz", "-o", str(tmp_path / "a.nnc")]) == 0
    assert main(["decode", str(tmp_path / "a.nnc"), "--format", "safetensors", "-o", str(tmp_path / "out.w")]) == 0
    assert list(converters.load_model(tmp_path / "out.w", format="safetensors").tensors) == ["fc.weight"]

    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in w.items()}, tmp_path / "pytorch_model.bin")  # Hugging Face name
    assert main(["encode", str(tmp_path / "pytorch_model.bin"), "-o", str(tmp_path / "b.nnc")]) == 0
    a, b = (nnc.decode((tmp_path / f).read_bytes()) for f in ("a.nnc", "b.nnc"))
    assert list(a) == list(b) == ["fc.weight"] and np.array_equal(a["fc.weight"], b["fc.weight"])


def test_encode_flags_default_to_the_config(monkeypatch, tmp_path):
    # the CLI restates no default: every setting flag is None unless given, and the config supplies the value
    from nnc import cli

    a = cli.build_parser().parse_args(["encode", "in.npz", "-o", "out.nnc"])
    settings = ("qp", "qp_density", "nonweight_qp", "qp_per_tensor", "dq", "row_skipping", "param_opt",
                "scan_order", "threads", "codebook", "bitdepth", "opt_qp", "sparsity", "struct_sparsity",
                "bits_per_param", "max_rel_error")
    assert {k: getattr(a, k) for k in settings} == dict.fromkeys(settings)
    assert cli._encoder_config(a) == nnc.EncoderConfig()
    d = cli.build_parser().parse_args(["decode", "in.nnc", "-o", "out.npz"])
    assert d.threads is None
