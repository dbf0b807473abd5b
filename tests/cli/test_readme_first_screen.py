"""The README's first command installs only what an ONNX encode needs (no PyTorch) and writes into a scratch
path; the FL snippet labels what it prints and the text explains it."""
import re
import subprocess
import sys

from clitools import ROOT, env

README = (ROOT / "README.md").read_text()


def _first_command() -> str:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)[0].strip()


def test_first_command_installs_no_torch_and_writes_to_tmp():
    cmd = _first_command()
    assert "nnc encode" in cmd
    installs = [s for s in cmd.split(" && ") if s.startswith("pip ")]
    assert installs and not any("torch" in s for s in installs), installs
    assert any('".[onnx]"' in s for s in installs)
    out = re.search(r" -o (\S+)", cmd).group(1)
    assert out.startswith("/tmp/"), out


def test_onnx_encode_never_imports_torch(tmp_path):
    # what the first command relies on: encoding an ONNX model works without PyTorch importable (through the
    # `python -m nnc` entry point a user without the script would use)
    code = ("import sys, runpy; sys.modules['torch'] = None\n"
            "import onnx, numpy as np\n"
            "from onnx import helper, numpy_helper, TensorProto\n"
            "w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype('f4'), 'w')\n"
            "g = helper.make_graph([helper.make_node('MatMul', ['x', 'w'], ['y'])], 'g',\n"
            "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 8])],\n"
            "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])], [w])\n"
            f"onnx.save(helper.make_model(g), {str(tmp_path / 'm.onnx')!r})\n"
            f"sys.argv = ['nnc', 'encode', {str(tmp_path / 'm.onnx')!r}, '-o', {str(tmp_path / 'm.nnc')!r}]\n"
            "runpy.run_module('nnc', run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.nnc").stat().st_size > 0


def test_fl_snippet_output_is_labelled_and_explained():
    block = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "ServerCodec" in b][0]
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    m = re.fullmatch(r"up (\d+) bytes \(float32: 2600\), down (\d+) bytes\n", out.stdout)
    assert m, out.stdout
    after = README.split(block)[1][:800]
    assert "It prints about `up" in after and "nothing went down" in after
