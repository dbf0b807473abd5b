"""Run NNCodec 2.1.3 (the reference implementation) as a test oracle in its own venv.

nnc never needs the reference to encode or decode, and the installed package never runs it. This module (test
support, outside the package) serves the test suite, ``tools/conform.py --impl reference|both`` and the benchmarks: it hands batches of jobs to
``reference_driver.py`` running under the reference venv's interpreter and reads the results back.

The venv is found at ``$NNCREF`` or ``/tmp/nncref``; build it with ``tools/setup_reference.sh``.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnc.errors import NNCError

__all__ = ["ReferenceUnavailable", "ReferenceError", "reference_python", "available", "encode_many",
           "decode_many", "encode_sequence", "decode_sequence"]

_DRIVER = Path(__file__).with_name("reference_driver.py")


class ReferenceUnavailable(NNCError, RuntimeError):
    """The reference venv is not installed."""


class ReferenceError(NNCError, RuntimeError):
    """The reference failed on a job (its message is kept)."""


def reference_python() -> Path:
    return Path(os.environ.get("NNCREF", "/tmp/nncref")) / "bin" / "python"


def available() -> bool:
    return reference_python().exists()


def _run(jobs: list[dict], timeout: float) -> list[dict]:
    py = reference_python()
    if not py.exists():
        raise ReferenceUnavailable(f"NNCodec reference venv not found at {py.parent.parent} "
                                   f"(build it with tools/setup_reference.sh)")
    proc = subprocess.run([str(py), str(_DRIVER)], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise ReferenceError(f"reference driver exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def _save_npz(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in tensors.items()})


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _collect(results: list[dict], op: str, strict: bool, timings: list | None, load) -> list:
    """Per job: ``load(i)`` for a success, a :class:`ReferenceError` for a failure (raised when ``strict``);
    the reference's timings are appended to ``timings`` when given."""
    out = []
    for i, res in enumerate(results):
        if timings is not None:
            timings.append(res.get("seconds"))
        if "error" in res:
            err = ReferenceError(f"reference {op} of case {i} failed: {res['error']}")
            if strict:
                raise err
            out.append(err)
        else:
            out.append(load(i))
    return out


def encode_many(cases: Sequence[tuple[Mapping[str, np.ndarray], Mapping]], *, timeout: float = 1800,
                strict: bool = True, timings: list | None = None) -> list[bytes | ReferenceError]:
    """Encode each ``(tensors, settings)`` with the reference; returns the bitstreams in order.

    With ``strict=False`` a failed case yields its :class:`ReferenceError` instead of raising. If ``timings``
    is a list, the reference's own encode time of each case (seconds, API call only) is appended to it.
    """
    with tempfile.TemporaryDirectory(prefix="nncref_") as tmp:
        tmp = Path(tmp)
        jobs = []
        for i, (tensors, settings) in enumerate(cases):
            _save_npz(tmp / f"{i}.npz", tensors)
            jobs.append({"op": "encode", "input": str(tmp / f"{i}.npz"), "output": str(tmp / f"{i}.nnc"),
                         "settings": dict(settings)})
        return _collect(_run(jobs, timeout), "encode", strict, timings, lambda i: (tmp / f"{i}.nnc").read_bytes())


def decode_many(bitstreams: Sequence[bytes], *, timeout: float = 1800, strict: bool = True,
                timings: list | None = None) -> list[dict[str, np.ndarray] | ReferenceError]:
    """Decode each bitstream with the reference; returns dicts of arrays in order (``timings`` as in
    :func:`encode_many`)."""
    with tempfile.TemporaryDirectory(prefix="nncref_") as tmp:
        tmp = Path(tmp)
        jobs = []
        for i, bs in enumerate(bitstreams):
            (tmp / f"{i}.nnc").write_bytes(bytes(bs))
            jobs.append({"op": "decode", "input": str(tmp / f"{i}.nnc"), "output": str(tmp / f"{i}.npz")})
        return _collect(_run(jobs, timeout), "decode", strict, timings, lambda i: _load_npz(tmp / f"{i}.npz"))


def encode_sequence(updates: Sequence[Mapping[str, np.ndarray]], settings: Mapping, *, tca: bool = True,
                    timeout: float = 1800) -> list[bytes]:
    """Encode differential updates as one incremental sequence (state kept across steps)."""
    with tempfile.TemporaryDirectory(prefix="nncref_") as tmp:
        tmp = Path(tmp)
        ins, outs = [], []
        for i, u in enumerate(updates):
            _save_npz(tmp / f"{i}.npz", u)
            ins.append(str(tmp / f"{i}.npz"))
            outs.append(str(tmp / f"{i}.nnc"))
        [res] = _run([{"op": "encode_seq", "inputs": ins, "outputs": outs, "settings": dict(settings),
                       "tca": tca}], timeout)
        if "error" in res:
            raise ReferenceError(f"reference sequence encode failed: {res['error']}")
        return [Path(p).read_bytes() for p in outs]


def decode_sequence(bitstreams: Sequence[bytes], *, timeout: float = 1800) -> list[dict[str, np.ndarray]]:
    """Decode an incremental sequence with the reference (state kept across steps)."""
    with tempfile.TemporaryDirectory(prefix="nncref_") as tmp:
        tmp = Path(tmp)
        ins, outs = [], []
        for i, bs in enumerate(bitstreams):
            (tmp / f"{i}.nnc").write_bytes(bytes(bs))
            ins.append(str(tmp / f"{i}.nnc"))
            outs.append(str(tmp / f"{i}.npz"))
        [res] = _run([{"op": "decode_seq", "inputs": ins, "outputs": outs}], timeout)
        if "error" in res:
            raise ReferenceError(f"reference sequence decode failed: {res['error']}")
        return [_load_npz(Path(p)) for p in outs]
