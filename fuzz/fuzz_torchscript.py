"""Fuzz the TorchScript state_dict reader (``nnc.converters._torchscript``): the input is the archive's
``data.pkl``, placed in the archive of a small scripted model (its ``code/`` declarations and tensor data) and
re-zipped, so every input gets past the zip CRCs to the opcode screen, the restricted unpickler, the tensor
bounds checks and the module walk.

Contract: returns a state_dict or raises ``nnc.ModelFormatError``; anything else is a finding.
Seeds: data.pkl of that model and of Silero VAD's .jit when installed (written by ``fuzz/run.sh torchscript``).
"""
import io
import sys
import zipfile

from _common import main

_entries = None


def small_archive() -> dict:
    """Entries of a scripted model with nesting, a ModuleList, buffers, a None bias, a tie and a bfloat16 table."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3, bias=False)
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 4)
            self.out.weight = self.fc.weight
            self.emb = nn.Embedding(5, 4).to(torch.bfloat16)

        def forward(self, x, y):
            for b in self.blocks:
                x = b(torch.cat([x, x], 1)[:, :2])
            return self.out(self.fc(y)) + x.mean()

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return {n: z.read(n) for n in z.namelist()}


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    global _entries
    import nnc
    from nnc.converters import _torchscript
    if _entries is None:
        _entries = small_archive()
        print("[torchscript] target: nnc.converters._torchscript.read_state_dict", file=sys.stderr)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in _entries.items():
            z.writestr(name, data if name.endswith("/data.pkl") else content)
    try:
        sd = _torchscript.read_state_dict(io.BytesIO(out.getvalue()))
    except nnc.ModelFormatError:
        return
    assert all(isinstance(k, str) for k in sd)


if __name__ == "__main__":
    main(TestOneInput, extra_imports=("nnc.converters", "nnc.converters._torchscript"))
