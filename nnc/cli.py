"""The ``nnc`` command line: encode, decode, info, check, conform (also ``python -m nnc``).

Every subcommand is a function of parsed arguments returning an exit status, so tests call
``main([...])`` directly. Before loading anything a command checks its paths, formats and flags, so a mistake
costs no work. Errors print one line (``nnc: error: <what> (<where>); <what to do>``) and map to exit codes:
0 success, 1 readable but non-conforming bitstream (``check``) or failed suite (``conform``), 2 unreadable,
damaged or incomplete input, or bad usage, 3 unsupported feature, 70 internal error (a bug), 130 interrupted.
Warnings (``nnc: warning: ...``, exit status unchanged) flag settings that likely wreck the model, targets that
cannot be met and flags that have no effect. ``--debug`` shows the traceback instead (docs/errors.md).

Flags default to ``None`` and fall back to :class:`nnc.EncoderConfig` / :class:`nnc.DecoderConfig`, so the
defaults live in one place.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import EncoderConfig as _EncoderConfig
from .config import decoder_limits
from .errors import (BitstreamError, ConfigError, LimitExceededError, ModelFormatError, NNCError,
                     UnsupportedFeatureError)

__all__ = ["build_parser", "main"]

_D = _EncoderConfig()  # the defaults shown in --help come from the config, which the flags fall back to
_QP_HELP = ("QP sets the quantisation step of weight tensors (rank > 1): step = 2**(QP/4) with the default "
            "--qp-density 2, so every 4 QP halve (more negative) or double (less negative) the step. More "
            f"negative = finer, larger file, smaller error. Default {_D.qp} (step 0.0015) keeps typical models' "
            "accuracy, -32 costs about 1.5 bits per parameter less and is usually fine, above about -20 most "
            "models degrade, "
            "and 0 or more wrecks them (nnc warns). The format allows -128..127.")


def _qp_override(text: str) -> tuple[str, int]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=QP, got {text!r}")
    try:
        return pattern, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"QP in {text!r} is not an integer") from None


# nnc.converters.FORMATS (not imported here: the CLI starts without loading the converters)
_FORMATS = {"onnx": (".onnx",), "pytorch": (".pt", ".pth", ".jit", ".bin", ".ckpt"),
            "safetensors": (".safetensors",), "npz": (".npz",)}
_MODEL_EXTS = tuple(e for exts in _FORMATS.values() for e in exts)
_NEEDS = {"onnx": "onnx", "pytorch": "torch"}

#: relative L2 error above which a model is very likely useless (weights of trained models lose their function
#: long before this; QP -38 gives about 1e-3)
USELESS_REL_L2 = 0.1


def _size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        value = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 5GB, 500MB, 1073741824)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnc", description="MPEG NNC (ISO/IEC 15938-17) neural network coding: compress model weights to "
        "standard NNC bitstreams (.nnc) and back.",
        epilog="Exit status: 0 ok, 1 not conforming (check), 2 bad input or usage, 3 unsupported, 130 interrupted. "
               "Errors and exit codes: docs/errors.md.")
    p.add_argument("--version", action="version", version=f"nnc {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser(
        "encode", help="encode a model (.onnx .safetensors .npz .pt .pth .bin .ckpt .jit, or a model folder) to .nnc",
        description="Encode a model file or folder to an NNC bitstream. Inputs: .onnx, .safetensors, .npz, "
                    "PyTorch .pt/.pth/.bin/.ckpt (weights only, never unpickled code), TorchScript .jit, or a "
                    "Hugging Face model folder (model.safetensors, pytorch_model.bin, model.onnx, sharded "
                    "*.index.json).", epilog=_QP_HELP)
    e.add_argument("input", help="model file or folder")
    e.add_argument("-o", "--output", required=True, help="bitstream to write (e.g. model.nnc)")
    e.add_argument("--format", choices=tuple(_FORMATS), default=None,
                   help="input model format when the extension does not tell")
    e.add_argument("--force", action="store_true",
                   help="write the bitstream even though the output name has a model extension (.onnx, .pt...)")
    e.add_argument("--qp", type=int, default=None,
                   help=f"QP of weight tensors: more negative = finer and larger; default {_D.qp} (see below)")
    e.add_argument("--qp-density", type=int, default=None,
                   help=f"QP steps per octave = 2**density; default {_D.qp_density}")
    e.add_argument("--nonweight-qp", type=int, default=None, help=f"QP of rank <= 1 tensors; default {_D.nonweight_qp}")
    e.add_argument("--qp-per-tensor", type=_qp_override, action="append", default=None, metavar="PATTERN=QP",
                   help="override the QP of tensors whose name matches the fnmatch PATTERN (repeatable)")
    e.add_argument("--no-dq", dest="dq", action="store_const", const=False, default=None,
                   help="uniform instead of dependent (trellis) quantisation")
    e.add_argument("--no-row-skipping", dest="row_skipping", action="store_const", const=False, default=None,
                   help="do not signal all-zero rows")
    e.add_argument("--no-param-opt", dest="param_opt", action="store_const", const=False, default=None,
                   help="no context-initialisation optimisation")
    e.add_argument("--scan-order", type=int, default=None,
                   help=f"0 row-major, 1..4 block scans; default {_D.scan_order}")
    e.add_argument("--threads", type=int, default=None,
                   help="tensors coded in parallel (default: every CPU; the output does not depend on it)")
    e.add_argument("--codebook", choices=["off", "auto", "force"], default=None,
                   help="codebook quantisation: auto = per tensor when smaller (NNCodec codebook_mode 2); slow "
                        "at fine QPs (one trial encode per distinct level, as NNCodec), meant for low bit depths")
    e.add_argument("--bitdepth", type=int, default=None, metavar="N",
                   help="integer-aligned mode: per-tensor qps so that levels fit N-bit integers (1..31)")
    e.add_argument("--opt-qp", dest="opt_qp", action="store_const", const=True, default=None,
                   help="NNCodec's per-tensor QP heuristic (sizes, spreads)")
    e.add_argument("--sparsity", type=float, default=None, metavar="FRACTION",
                   help="unstructured sparsification before quantisation, target fraction of zeros (0..1)")
    e.add_argument("--struct-sparsity", type=float, default=None, metavar="GAIN",
                   help="structured sparsification: zero output channels below GAIN x mean magnitude")
    rc = e.add_mutually_exclusive_group()
    rc.add_argument("--bits-per-param", type=float, default=None,
                    help="rate control: choose per-tensor QPs for about this many bits per float parameter "
                         "(replaces --qp)")
    rc.add_argument("--max-rel-error", type=float, default=None,
                    help="rate control: coarsest QP per tensor with relative RMS error <= this (replaces --qp)")
    e.add_argument("--sensitivity", default=None, metavar="FILE.json",
                   help="with --bits-per-param: task sensitivities per tensor (JSON name -> weight, as written by "
                        "nnc.coding.tools.ratecontrol.save_sensitivities) weighting each tensor's squared error")
    e.add_argument("--model-state-only", action="store_true",
                   help="of a PyTorch checkpoint, code only the model state_dict (optimizer state, EMA copies, "
                        "step... are left out and named); default: the whole checkpoint, structure kept")
    e.add_argument("--reference-layout", action="store_true",
                   help="write exactly what NNCodec 2.1.3 writes for these tensors (float32/int32, its empty "
                        "topology unit): byte-identical to the reference, but without the tensor list and "
                        "original dtypes that let nnc verify completeness and restore bfloat16/int64/...")
    e.add_argument("--no-verify", action="store_true", help="skip decoding back to report the error")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress display")

    d = sub.add_parser("decode", help="decode .nnc to .npz / .safetensors / .pt / .onnx",
                       description="Decode an NNC bitstream to a model file. A bitstream whose topology lists "
                                   "its tensors (nnc encode's default) must hold all of them.")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True, help="model file to write; the extension picks the format")
    d.add_argument("--format", choices=tuple(_FORMATS), default=None,
                   help="output model format when the extension does not tell")
    d.add_argument("--template", default=None, metavar="ORIGINAL.jit",
                   help="write a TorchScript archive: this program with the decoded weights (nothing is run)")
    d.add_argument("--threads", type=int, default=None,
                   help="decode threads (default: every CPU): NDUs in parallel, and block rows with entry points")
    d.add_argument("--shard-size", type=_size, default=None, metavar="SIZE",
                   help="write a Hugging Face sharded safetensors checkpoint with shards of at most SIZE "
                        "(e.g. 5GB, 500MB); -o DIR/ shards at 5GB by default")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    _add_limit_flags(d)

    i = sub.add_parser("info", help="unit-by-unit summary of a bitstream")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.add_argument("--quiet", action="store_true", help="no progress display")
    _add_limit_flags(i)

    c = sub.add_parser("check", help="check a bitstream for conformance and completeness")
    c.add_argument("input")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true", help="no progress display")
    _add_limit_flags(c)

    f = sub.add_parser("conform", help="run a conformance suite folder")
    f.add_argument("suite", nargs="?", default="conformance")
    f.add_argument("--json", action="store_true")
    _add_limit_flags(f)
    return p


# ----------------------------------------------------------------------------------------------------------
# messages, progress, interruption
# ----------------------------------------------------------------------------------------------------------
class UsageError(ConfigError):
    """A command line that cannot work (conflicting flags, bad paths); raised before anything is loaded."""


class OutputError(NNCError, OSError):
    """The output could not be written (disk full, file too large, permissions); the previous file is intact."""


@contextlib.contextmanager
def _writing(path: str):
    try:
        yield
    except OSError as e:
        if isinstance(e, NNCError):
            raise
        what = (e.strerror or _one_line(e))
        raise OutputError(f"cannot write {path}: {what[:1].lower() + what[1:]}; nothing was written (an existing "
                          f"file is unchanged): check the free space and the permissions of "
                          f"{os.path.dirname(os.path.abspath(path))}") from None


def _warn(msg: str) -> None:
    print(f"nnc: warning: {msg}", file=sys.stderr)


class _Progress:
    """Phase display on stderr for phases longer than about a second, only on a terminal and without --quiet."""

    def __init__(self, enabled: bool):
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = enabled and tty
        # seconds a phase runs before it is shown (NNC_PROGRESS_DELAY overrides, e.g. 0 to see every phase)
        try:
            self.delay = max(0.0, float(os.environ.get("NNC_PROGRESS_DELAY", "1")))
        except ValueError:
            self.delay = 1.0

    @contextlib.contextmanager
    def phase(self, label: str):
        if not self.enabled:
            yield
            return
        stop = threading.Event()
        t0 = time.monotonic()
        shown = [0]

        def show():
            if self.delay > 0 and stop.wait(self.delay):
                return
            spin = "|/-\\"
            i = 0
            while True:
                line = f"nnc: {label} {spin[i % 4]} {time.monotonic() - t0:.0f} s"
                sys.stderr.write("\r" + line.ljust(shown[0]))
                sys.stderr.flush()
                shown[0] = len(line)
                i += 1
                if stop.wait(0.25):
                    return

        th = threading.Thread(target=show, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join()
            if shown[0]:
                sys.stderr.write("\r" + " " * shown[0] + "\r")
                sys.stderr.flush()


class _State:
    committed = False   # the output file is in place: an interrupt now changes nothing


_STATE = _State()


def _stop_now(code: int, message: str | None) -> None:
    from ._atomic import remove_live_temporaries
    remove_live_temporaries()
    if message:
        print(message, file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _run_interruptibly(fn):
    """Run ``fn`` in a worker thread so that Ctrl-C (and SIGTERM) stop the process at once, even while the C++
    core codes a large tensor: the main thread removes temporary files and exits. Nothing is written before the
    last step, so an interrupted run leaves no output (an existing file stays as it was)."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict = {}

    def run():
        try:
            box["rc"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            box["exc"] = e

    worker = threading.Thread(target=run, name="nnc-command", daemon=True)
    worker.start()
    while worker.is_alive():
        try:
            worker.join(0.05)
        except KeyboardInterrupt:
            if not _STATE.committed:
                _stop_now(130, "nnc: interrupted; nothing was written")
        except SystemExit as e:  # SIGTERM
            if not _STATE.committed:
                _stop_now(e.code if isinstance(e.code, int) else 143, None)
    if "exc" in box:
        raise box["exc"]
    return box["rc"]


# ----------------------------------------------------------------------------------------------------------
# checks done before any work
# ----------------------------------------------------------------------------------------------------------
def _format_of(path: str, given: str | None, role: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    by_ext = next((fmt for fmt, exts in _FORMATS.items() if ext in exts), None)
    if given is not None:
        if role == "output" and by_ext is not None and by_ext != given:
            raise UsageError(f"--format {given} contradicts the {role}'s extension {ext} ({by_ext}); drop --format "
                             f"or rename the file")
        return given
    if by_ext is None:
        known = " ".join(_MODEL_EXTS)
        raise UsageError(f"cannot tell the model format of {path} from its extension {ext or '(none)'}; use one "
                         f"of {known}, or pass --format {'|'.join(_FORMATS)}")
    return by_ext


def _need_module(fmt: str, role: str) -> None:
    import importlib.util
    mod = _NEEDS.get(fmt)
    if mod and importlib.util.find_spec(mod) is None:
        extra = "onnx" if mod == "onnx" else "torch"
        raise UsageError(f"{role} in {fmt} format needs the '{mod}' package, which is not installed; "
                         f"pip install '{mod}' (or the package's extra: nnc[{extra}])")


def _existing_input(path: str) -> None:
    if not os.path.exists(path):
        hint = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise UsageError(f"cannot read {path}: no such file or folder{hint}; check the path")
    if not os.path.isdir(path) and not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {path}: permission denied")


def _input_files(path: str) -> list[str]:
    if os.path.isdir(path):
        with os.scandir(path) as it:
            return [e.path for e in it if e.is_file()]
    return [path]


def _check_output(out: str, inputs: list[str], *, folder: bool = False) -> None:
    """The output can be written and is none of the inputs (also not through a symbolic or hard link).
    ``folder``: the output is a folder (a sharded checkpoint), created if missing."""
    if not folder and (out.endswith(os.sep) or os.path.isdir(out)):
        raise UsageError(f"the output {out} is a folder; give a file name, e.g. {os.path.join(out, 'model.nnc')}")
    parent = os.path.dirname(os.path.abspath(out.rstrip("/" + os.sep) or out))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {out}: the folder {parent} does not exist; create it first "
                         f"(mkdir -p {parent}) or choose another output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: no permission to create files in {parent}")
    if os.path.exists(out):
        for src in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(out, src):
                    link = "" if os.path.abspath(out) == os.path.abspath(src) else " (through a link)"
                    raise UsageError(f"the output {out} is the input file {src}{link}; nnc never overwrites its "
                                     "input: choose another output name")


_RATE = ("bits_per_param", "max_rel_error", "bitdepth")
_QP_FLAGS = ("qp", "nonweight_qp", "qp_per_tensor", "opt_qp")


# -- decoder limits (--max-memory, --strict) ---------------------------------------------------------------
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
               "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def _size(text: str) -> int:
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M, 4G or 1073741824, got {text!r}") from None
    if unit not in _SIZE_UNITS or not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 512M, 4G or 1073741824, got {text!r}")
    return max(1, int(value * _SIZE_UNITS[unit]))


def default_max_memory() -> int:
    """The CLI's default --max-memory: half the physical memory, at least 1 GiB, at most 16 GiB (the library's
    DecoderConfig() default), so that a hostile file stops with a message instead of swapping a desktop."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 8 << 30
    return int(min(16 << 30, max(1 << 30, phys // 2)))


def _add_limit_flags(sp) -> None:
    sp.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                    help="most memory decoding may hold (outputs, levels, temporaries, headers), e.g. 512M, 4G; "
                         "default: half the physical memory, 1..16 GiB (1 GiB with --strict)")
    sp.add_argument("--strict", action="store_true",
                    help="limits for files from strangers: DecoderConfig.strict() (65536 units, and no more than "
                         "2048 + one per 256 bytes of input; tensors of at most max-memory/4 elements, 1 GiB unless "
                         "--max-memory)")


def _limits(a):
    from .config import DecoderConfig
    kw = {} if getattr(a, "threads", None) is None else {"threads": a.threads}
    if a.strict:
        return DecoderConfig.strict(max_total_bytes=a.max_memory or (1 << 30), **kw)
    return DecoderConfig(max_total_bytes=a.max_memory or default_max_memory(), **kw)


def _limit_hint(a, what: str = "") -> str:
    cfg = _limits(a)
    return (f"{what}a decoding limit stopped {getattr(a, 'input', None) or getattr(a, 'suite', '')}: rerun with "
            f"--max-memory SIZE above {cfg.max_total_bytes} bytes"
            + (" or without --strict" if a.strict else "") + " if you trust the file")



def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _encoder_config(a):
    from .config import EncoderConfig

    given = [n for n in _RATE if getattr(a, n) is not None]
    if len(given) > 1:
        raise UsageError(f"{_flag(given[0])} and {_flag(given[1])} both choose every tensor's QP; give one of them")
    if given:
        clash = [n for n in _QP_FLAGS if getattr(a, n) is not None]
        if clash:
            raise UsageError(f"{_flag(clash[0])} conflicts with {_flag(given[0])}, which chooses the QPs itself; "
                             f"drop {_flag(clash[0])} (or {_flag(given[0])})")
    if a.scan_order and a.dq is None and a.row_skipping is None:
        raise UsageError(f"--scan-order {a.scan_order} needs --no-dq or --no-row-skipping (block scans cannot be "
                         "combined with dependent quantisation and row skipping)")
    if a.threads is not None and a.threads < 1:
        raise UsageError(f"--threads must be 1 or more, got {a.threads}")
    kw = {"qp": a.qp, "qp_density": a.qp_density, "nonweight_qp": a.nonweight_qp, "dq": a.dq,
          "row_skipping": a.row_skipping, "param_opt": a.param_opt, "scan_order": a.scan_order,
          "threads": a.threads, "codebook": a.codebook, "bitdepth": a.bitdepth, "opt_qp": a.opt_qp,
          "sparsity": a.sparsity, "struct_sparsity": a.struct_sparsity, "target_bits_per_param": a.bits_per_param,
          "max_rel_error": a.max_rel_error, "tensor_weights": _sensitivity_arg(a) or None,
          "qp_per_tensor": dict(a.qp_per_tensor) if a.qp_per_tensor is not None else None}
    try:
        return EncoderConfig(**{k: v for k, v in kw.items() if v is not None})
    except ConfigError as e:
        raise UsageError(f"invalid settings: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------
def _error_stats(orig: dict, dec: dict) -> dict:
    sq = ref = 0.0
    max_abs = 0.0
    n = 0
    for k, a in orig.items():
        a64 = np.asarray(a, dtype=np.float64).reshape(-1)
        b64 = np.asarray(dec[k], dtype=np.float64).reshape(-1)
        err = np.abs(a64 - b64)
        if err.size:
            max_abs = max(max_abs, float(err.max()))
        sq += float(np.dot(err, err))
        ref += float(np.dot(a64, a64))
        n += a64.size
    return {"max_abs_err": max_abs, "rel_l2": (sq ** 0.5 / ref ** 0.5) if ref > 0 else 0.0,
            "mse": sq / max(n, 1)}


def _dtype_figures(tensors, dtypes: dict[str, str]) -> dict[str, dict]:
    """Per source dtype: tensors, parameters and bytes as the input holds them (bfloat16 = 2 bytes each), from
    the headers where a lazily read model offers them (nothing is read)."""
    from .converters.manifest import ITEMSIZE
    names = getattr(tensors, "dtype_names", None)
    if callable(names):
        declared, shapes = names(), tensors.shapes()
        items = [(k, declared[k], math.prod(shapes[k]), ITEMSIZE.get(declared[k], 4)) for k in tensors]
    else:
        items = []
        for k, arr in tensors.items():
            arr = np.asarray(arr)
            items.append((k, str(arr.dtype), int(arr.size), arr.dtype.itemsize))
    out: dict[str, dict] = {}
    for name, dt, size, itemsize in items:
        dt = dtypes.get(name) or dt
        f = out.setdefault(dt, {"tensors": 0, "parameters": 0, "bytes": 0})
        f["tensors"] += 1
        f["parameters"] += size
        f["bytes"] += size * ITEMSIZE.get(dt, itemsize)
    return out


class _StreamingError:
    """_error_stats, accumulated tensor by tensor (so that verifying never holds the whole model), with the
    worst relative RMS error of a float tensor."""

    def __init__(self):
        self.sq = self.ref = self.max_abs = 0.0
        self.n = 0
        self.worst, self.worst_name = 0.0, None

    def add(self, name: str, a, b) -> None:
        a = np.asarray(a)
        a64 = a.astype(np.float64).reshape(-1)
        err = np.abs(a64 - np.asarray(b).astype(np.float64).reshape(-1))
        if err.size:
            self.max_abs = max(self.max_abs, float(err.max()))
        sq, ref = float(np.dot(err, err)), float(np.dot(a64, a64))
        self.sq += sq
        self.ref += ref
        self.n += a64.size
        if (a.dtype.kind == "f" or a.dtype.name == "bfloat16") and ref > 0 and (sq / ref) ** 0.5 > self.worst:
            self.worst, self.worst_name = (sq / ref) ** 0.5, name

    def result(self) -> dict:
        return {"max_abs_err": self.max_abs, "rel_l2": (self.sq ** 0.5 / self.ref ** 0.5) if self.ref > 0 else 0.0,
                "mse": self.sq / max(self.n, 1)}


def _reference_arrays(tensors: dict) -> dict:
    """What NNCodec 2.1.3 codes: float32 for float tensors, int32 for integer ones."""
    out = {}
    for k, v in tensors.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" or v.dtype.name == "bfloat16":
            out[k] = v.astype(np.float32)
        elif v.dtype.kind in "iub":
            if v.size and (int(v.min()) < -2 ** 31 or int(v.max()) >= 2 ** 31):
                raise UsageError(f"tensor {k!r} holds values outside the int32 range, which NNCodec cannot code; "
                                 "drop --reference-layout (nnc then signals int64)")
            out[k] = v.astype(np.int32)
        else:
            out[k] = v
    return out


def _coded_and_carried(bitstream_path: str, source: str, coded_input_bytes: int, n_params: int) -> dict:
    """Bytes of the NDUs (coded tensors) and of the topology unit (what the model carries uncoded), and the
    ratio against the input file when the input is one file. Reads the unit headers of the written file
    (memory-mapped: the payloads are not read)."""
    import mmap

    from . import bitstream as bs
    size = os.path.getsize(bitstream_path)
    with open(bitstream_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            sizes = [(u.nnr_unit_type, u.size) for u in bs.iter_units(view, strict=False)]
        finally:
            view.release()
    coded = sum(n for t, n in sizes if t == bs.UnitType.NNR_NDU)
    carried = sum(n for t, n in sizes if t == bs.UnitType.NNR_TPL)
    out = {"coded_bytes": coded, "carried_bytes": carried,
           "coded_bits_per_param": 8 * coded / max(n_params, 1),
           "coded_ratio": coded_input_bytes / max(coded, 1)}
    if os.path.isfile(source):
        out["file_bytes"] = os.path.getsize(source)
        out["file_ratio"] = out["file_bytes"] / size
    return out


def _sensitivity_arg(a) -> dict:
    if a.sensitivity is None:
        return {}
    from .coding.tools.ratecontrol import load_sensitivities
    if a.bits_per_param is None:
        raise UsageError("--sensitivity weights the allocation of --bits-per-param; give --bits-per-param too")
    return load_sensitivities(a.sensitivity)


# ----------------------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------------------
def _cmd_encode(a) -> int:
    # everything that can be wrong with the command line is found before the model is loaded
    cfg = _encoder_config(a)
    _existing_input(a.input)
    if not os.path.isdir(a.input):
        _need_module(_format_of(a.input, a.format, "input"), "reading the input")
    elif a.format is not None:
        _need_module(a.format, "reading the input")
    _check_output(a.output, _input_files(a.input))  # first: --force never allows overwriting the input
    ext = os.path.splitext(a.output)[1].lower()
    if ext in _MODEL_EXTS and not a.force:
        raise UsageError(f"refusing to write an NNC bitstream to {a.output}: its extension {ext} is a model format, "
                         "so the file would pass for a model; name it .nnc, or pass --force")

    from . import converters
    from .codec import Decoder, Encoder
    from .config import DecoderConfig
    from .converters.manifest import reference_topology, source_dtypes, with_name_list

    ui = _Progress(not (a.quiet or a.json))
    t0 = time.perf_counter()
    with ui.phase(f"loading {a.input}"):
        if a.model_state_only:
            model = converters.load_model(a.input, format=a.format, model_state_only=True)
        else:   # safetensors: opened lazily, one tensor read at a time
            model = converters.open_model(a.input, format=a.format)
    t_load = time.perf_counter() - t0
    for note in model.notes:
        print(f"nnc: note: {note}", file=sys.stderr)
    dtypes = source_dtypes(model.topology)
    tensors = model.tensors
    _warn_ignored_flags(a, tensors)
    if a.reference_layout:
        lost = sorted({d for d in dtypes.values() if d not in ("float32", "int32")})
        if lost or model.topology is not None and model.topology.data:
            what = [f"the original dtypes ({', '.join(lost)})"] if lost else []
            if model.source_format == "onnx":
                what.append("the ONNX graph")
            elif model.topology is not None and model.topology.data and not lost:
                what.append("the model's topology record (tied tensors, 0-d shapes, metadata)")
            _warn(f"--reference-layout leaves out {' and '.join(what)}; decoding gives the coded float32/int32 "
                  "tensors only" + (", no .onnx model" if model.source_format == "onnx" else ""))
        tensors = _reference_arrays(tensors)
        topology = reference_topology(model.source_format)
    else:
        topology = with_name_list(model.topology, tensors, model.source_format)
    t0 = time.perf_counter()
    # written unit by unit as coded (atomically: a temporary file renamed at the end)
    with _writing(a.output):
        done = Encoder(cfg).encode_to(a.output, tensors, topology=topology, progress=ui.enabled)
    _STATE.committed = True
    t_enc = time.perf_counter() - t0

    figures = _dtype_figures(tensors if a.reference_layout else model.tensors, {} if a.reference_layout else dtypes)
    n_params = sum(f["parameters"] for f in figures.values())
    orig_bytes = sum(f["bytes"] for f in figures.values())
    size = done.bitstream_bytes
    summary = {"input": a.input, "output": a.output, "tensors": done.tensors, "parameters": n_params,
               "input_bytes": orig_bytes, "dtypes": figures, "bitstream_bytes": size,
               "ratio": orig_bytes / size, "bits_per_param": 8 * size / max(n_params, 1),
               "layout": "reference" if a.reference_layout else "nnc", "load_s": t_load, "encode_s": t_enc}
    summary.update(_coded_and_carried(a.output, a.input, orig_bytes, n_params))
    worst = None
    if not a.no_verify:
        t0 = time.perf_counter()
        stats = _StreamingError()
        with ui.phase("verifying (decoding back)"):
            for t in Decoder(DecoderConfig(threads=cfg.threads)).stream(Path(a.output), levels=False):
                stats.add(t.name, tensors[t.name], t.array)
        summary["decode_s"] = time.perf_counter() - t0
        summary.update(stats.result())
        worst = (stats.worst, stats.worst_name)
    if not a.no_verify or a.bits_per_param is not None:
        _warn_results(a, cfg, summary, worst)
    if a.json:
        print(json.dumps(summary))
    else:
        kinds = ", ".join(f"{dt} {f['parameters']:,}" for dt, f in figures.items())
        print(f"{a.input} -> {a.output}")
        print(f"  tensors {summary['tensors']}, parameters {n_params:,} ({kinds}), input {orig_bytes:,} bytes")
        print(f"  bitstream {size:,} bytes  (ratio {summary['ratio']:.2f}x, "
              f"{summary['bits_per_param']:.3f} bits/param)")
        print(f"  coded {summary['coded_bytes']:,} bytes for {n_params:,} coded parameters "
              f"({summary['coded_bits_per_param']:.3f} bits/param, ratio {summary['coded_ratio']:.2f}x); carried "
              f"{summary['carried_bytes']:,} bytes in the topology unit (graph, exact and small tensors, record)")
        if "max_abs_err" in summary:
            print(f"  error: max |w - w^| {summary['max_abs_err']:.3g}, relative L2 {summary['rel_l2']:.3g}")
        print(f"  load {t_load:.2f} s, encode {t_enc:.2f} s"
              + (f", decode {summary['decode_s']:.2f} s" if "decode_s" in summary else ""))
    return 0


def _warn_ignored_flags(a, tensors: dict) -> None:
    import fnmatch
    for pattern, _ in a.qp_per_tensor or []:
        if pattern not in tensors and not any(fnmatch.fnmatchcase(k, pattern) for k in tensors):
            _warn(f"--qp-per-tensor {pattern}=... matches no tensor of {a.input} and is ignored (names are as "
                  "`nnc info` lists them after encoding; patterns use fnmatch: * and ?)")
    if a.nonweight_qp is None and a.qp is None:
        return
    ranks = [len(shape) for dtype, shape in _dtypes_and_shapes(tensors) if dtype.startswith(("float", "bfloat"))]
    if a.nonweight_qp is not None and not any(r <= 1 for r in ranks):
        _warn(f"--nonweight-qp is ignored: {a.input} has no float tensor of rank <= 1")
    if a.qp is not None and ranks and not any(r > 1 for r in ranks):
        _warn(f"--qp is ignored: {a.input} has no float tensor of rank > 1 (use --nonweight-qp)")


def _dtypes_and_shapes(tensors) -> list[tuple[str, tuple]]:
    """(dtype name, shape) of every tensor, from a lazy model's headers (nnc.converters.open_model) without
    reading any tensor, else from the arrays one at a time (never all of them at once)."""
    if callable(getattr(tensors, "dtype_names", None)) and callable(getattr(tensors, "shapes", None)):
        names, shapes = tensors.dtype_names(), tensors.shapes()
        return [(str(names[k]), tuple(shapes[k])) for k in tensors.keys()]
    out = []
    for k in tensors.keys():
        v = np.asarray(tensors[k])
        out.append((v.dtype.name, v.shape))
    return out


def _warn_results(a, cfg, summary: dict, worst: tuple[float, str | None] | None) -> None:
    rl2 = summary.get("rel_l2")
    if rl2 is not None and rl2 > USELESS_REL_L2:
        if a.bits_per_param is not None or a.max_rel_error is not None or a.bitdepth is not None:
            how = "allow more bits (a larger --bits-per-param / --bitdepth or smaller --max-rel-error)"
        else:
            how = f"use a more negative --qp (now {cfg.qp}; the default is {_D.qp}, and each -4 halves the step)"
        _warn(f"relative L2 error {rl2:.2f}: the model is likely useless at these settings (a usable model is "
              f"typically below 0.01); {how}")
    target = a.bits_per_param
    if target is not None and summary["bits_per_param"] > 1.25 * target:
        _warn(f"--bits-per-param {target:g} cannot be met for {a.input}: the bitstream has "
              f"{summary['bits_per_param']:.3f} bits/param (the coarsest QPs, headers and integer tensors cost "
              "more); the file is written as it is")
    if a.max_rel_error is not None and worst is not None and worst[1] is not None \
            and worst[0] > 1.05 * a.max_rel_error:
        _warn(f"--max-rel-error {a.max_rel_error:g} cannot be met: tensor {worst[1]!r} has relative RMS error "
              f"{worst[0]:.3g} even at the finest QP tried")


def _read_input(path: str) -> bytes:
    _existing_input(path)
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder, not an NNC bitstream file")
    with open(path, "rb") as f:
        return f.read()


def _bad(message: str, advice: str | None, exit_code: int, **where) -> BitstreamError:
    err = BitstreamError(message, **where)
    err.advice = advice
    err.exit_code = exit_code
    return err


_NOT_NNC = ("nnc decode/info/check read .nnc files written by nnc encode or NNCodec; check the file name")
_DAMAGED = "the file was cut short or changed; get an intact copy (nnc check lists every problem)"


@contextlib.contextmanager
def _mapped(path: str):
    """The file as a read-only memoryview (memory-mapped: pages are read as they are touched)."""
    import mmap
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            yield view
        finally:
            # parsed units may still hold slices of the view (an error's traceback): then the mapping is left
            # to the garbage collector
            with contextlib.suppress(BufferError):
                view.release()
                mm.close()


def _problem(path: str, data, *, first_unit_only: bool = False) -> BitstreamError | None:
    """One classification of a bad bitstream for decode, info and check (same message, same exit code): not an
    NNC bitstream at all (exit 2), damaged (a unit that does not parse, e.g. a file cut mid-unit; exit 1) or
    incomplete (its topology lists tensors that no unit holds, e.g. a file cut at a unit boundary; exit 1).

    ``first_unit_only``: only whether it is an NNC bitstream at all (its first unit). The commands ask that
    first and the whole question only when their own pass over the stream found something wrong, so that a
    sound stream is parsed once (a flood of tiny units costs its parse time again with each pass)."""
    from . import bitstream as B
    from .converters.manifest import expected_names

    if len(data) == 0:
        return _bad(f"{path} is empty, not an NNC bitstream", _NOT_NNC, 2)
    if first_unit_only:
        first = next(iter(B.iter_units(data, strict=False, max_units=1)), None)
    else:
        from .config import active_decoder_limits
        parsed = B.parse(data, strict=False, limits=active_decoder_limits())    # the command's --max-memory
        first = parsed.units[0] if parsed.units else None
    if first is None or first.nnr_unit_type != B.NNRUnitType.NNR_STR or first.errors:
        return _bad(f"{path} is not an NNC bitstream (it does not start with an NNR_STR unit)", _NOT_NNC, 2)
    if first_unit_only:
        return None
    damage = next((e for u in parsed.units for e in u.errors if _is_damage(e)), None)
    if damage is not None:
        return _damaged(path, damage)
    try:
        expected = expected_names(parsed.topology)
    except NNCError:
        expected = None
    if expected:
        present = {str(n) for u in parsed.ndus() if u.body is not None for n in u.body.element_names}
        missing = [n for n in expected if n not in present]
        if missing:
            return _incomplete(path, len(expected), missing, len(parsed.units), len(data))
    return None


def _is_damage(e) -> bool:
    """A parser finding that makes the file damaged (an unsupported feature or a limit is said otherwise)."""
    return not isinstance(e, (UnsupportedFeatureError, LimitExceededError))


def _damaged(path: str, e) -> BitstreamError:
    reason = getattr(e, "reason", None) or _one_line(e)
    return _bad(f"{path} is damaged: {reason}", _DAMAGED, 1, unit_index=getattr(e, "unit_index", None),
                byte_offset=getattr(e, "byte_offset", None), syntax_path=getattr(e, "syntax_path", None))


def _incomplete(path: str, listed: int, missing: list, units: int, nbytes: int) -> BitstreamError:
    return _bad(f"{path} is incomplete: its topology lists {listed} tensors, {len(missing)} of them are missing "
                f"(first {missing[0]!r})", "the file was probably cut short at a unit boundary; get an intact copy",
                1, unit_index=units, byte_offset=nbytes)


def _problem_in(path: str, report) -> BitstreamError | None:
    """:func:`_problem` (after its first-unit question) from what a conformance check saw on its own lenient
    parse of the stream: the same classification without parsing the stream again."""
    damage = next((e for e in report.parse_errors if _is_damage(e)), None)
    if damage is not None:
        return _damaged(path, damage)
    if report.missing:
        return _incomplete(path, report.listed, report.missing, len(report.units), report.size)
    return None


def _lists_missing(topology, names) -> bool:
    """Whether the topology lists tensors that are not among ``names`` (a file cut at a unit boundary)."""
    from .converters.manifest import expected_names

    try:
        expected = expected_names(topology)
    except NNCError:
        return False
    return bool(expected) and any(n not in names for n in expected)


def _from_report(path: str, report) -> BitstreamError | None:
    """The first error of a conformance report as the one-line error decode, info and check all print."""
    v = next(iter(report.errors), None)
    if v is None:
        return None
    return _bad(f"{path} is damaged: {v.message}", _DAMAGED, 1, unit_index=v.unit_index, byte_offset=v.byte_offset,
                syntax_path=v.syntax_path)


def _cmd_decode(a) -> int:
    _existing_input(a.input)
    # a Hugging Face sharded folder (safetensors; another --format keeps the "is a folder" refusal)
    to_folder = (a.output.endswith(("/", os.sep)) or os.path.isdir(a.output)) and a.format in (None, "safetensors")
    fmt = "safetensors" if to_folder else _format_of(a.output, a.format, "output")
    if a.template is not None:
        if fmt != "pytorch":
            raise UsageError(f"--template makes a TorchScript archive; {a.output} names a {fmt} file: use a .pt or "
                             ".jit output")
        _existing_input(a.template)
    elif os.path.splitext(a.output)[1].lower() == ".jit":
        raise UsageError(f"cannot write {a.output} without the TorchScript program: pass the original archive with "
                         "--template original.jit, or write a .pt state_dict")
    _need_module(fmt, "writing the output")
    if a.threads is not None and a.threads < 1:
        raise UsageError(f"--threads must be 1 or more, got {a.threads}")
    _check_output(a.output, [a.input] + ([a.template] if a.template else []), folder=to_folder)

    from . import converters
    from .codec import Decoder

    ui = _Progress(not a.quiet)
    out = a.output
    fmt = None if a.format is None else converters.detect_format(out, a.format)
    folder = out.endswith(("/", os.sep)) or os.path.isdir(out)
    streaming = a.template is None and (folder or a.shard_size is not None or fmt == "safetensors" or (
        fmt is None and out.lower().endswith(".safetensors")))
    if a.shard_size is not None and not streaming:
        raise UsageError("--shard-size writes safetensors: give -o DIR/ or -o NAME.safetensors")
    if streaming:   # tensor by tensor from the memory-mapped bitstream into the output file(s)
        if not os.path.isfile(a.input):
            _read_input(a.input)   # the usual "cannot read" error
        with _mapped(a.input) as view:   # headers only: the payloads are not read here
            bad = _problem(a.input, view)
        if bad is not None:
            raise bad
        with ui.phase(f"decoding {a.input} into {out}"):
            try:
                stream = Decoder(_limits(a)).stream(Path(a.input), levels=False)
                paths = converters.save_model_streaming(out, stream, shard_size=a.shard_size, format=a.format)
            except BitstreamError as e:
                if isinstance(e, LimitExceededError):
                    raise
                from .conformance.checker import check  # say it as `nnc check` and `nnc info` do
                with _mapped(a.input) as view:
                    raise (_from_report(a.input, check(view)) or e) from None
        _STATE.committed = True
        print(f"{a.input} -> {out}: {len(stream)} tensors in {len(paths)} file(s)")
        return 0
    data = _read_input(a.input)
    bad = _problem(a.input, data, first_unit_only=True)
    if bad is not None:
        raise bad
    if fmt == "onnx":
        from . import bitstream as B
        from .converters._onnx import is_onnx_topology
        if not is_onnx_topology(B.parse(data, strict=False).topology):
            raise UsageError(f"cannot write {a.output}: {a.input} carries no ONNX graph (it was not made from an ONNX "
                             "model, or with --reference-layout); write .safetensors, .pt or .npz instead")
    cfg = _limits(a)
    dec = Decoder(cfg)
    with ui.phase(f"decoding {a.input}"):
        try:
            model = dec.decode_model(data, levels=False)      # levels freed per tensor
        except BitstreamError as e:
            if isinstance(e, LimitExceededError):
                raise
            from .conformance.checker import check  # say it as `nnc check` and `nnc info` do
            report = check(data, units=dec.failed_units)     # the decoder's parse when it was clean
            raise (_problem_in(a.input, report) or _from_report(a.input, report) or e) from None
    if _lists_missing(model.topology, model.tensors):
        bad = _problem(a.input, data)       # incomplete: refused before anything is written
        if bad is not None:
            raise bad
    left = max(1, cfg.max_total_bytes - dec.last_budget.used)
    with ui.phase(f"writing {a.output}"), _writing(a.output), decoder_limits(cfg.replace(max_total_bytes=left)):
        # topology inflation gets what the decoding budget has left
        converters.save_model(a.output, model.tensors, model.topology, format=a.format, template=a.template)
    _STATE.committed = True
    print(f"{a.input} -> {a.output}: {len(model.tensors)} tensors")
    return 0


def _cmd_info(a) -> int:
    from .describe import inspect as inspect_bitstream

    data = _read_input(a.input)
    with _Progress(not (a.quiet or a.json)).phase(f"reading {a.input}"):
        bad = _problem(a.input, data, first_unit_only=True)
        if bad is not None:
            raise bad  # not NNC at all: a unit list of it would mean nothing
        units: list = []
        info = inspect_bitstream(data, config=_limits(a), parsed=units)
        # a limit that stopped the description is said as such below: no second pass to classify it
        damaged = sum(len(u.errors) for u in info.units) > len(info.limits_hit)
        if damaged or info.missing:
            from .conformance.checker import check  # say it as `nnc check` and `nnc decode` do
            report = check(data, config=_limits(a), units=units or None)     # inspect's parse, when it kept it
            bad = _problem_in(a.input, report)
            if bad is None and damaged and not info.limits_hit:
                bad = _from_report(a.input, report)
        del units
    print(json.dumps(info.to_dict(), indent=1) if a.json else info.to_text())
    if bad is not None:     # damage found before a limit stopped the description: said as check and decode say it
        raise bad
    if info.limits_hit:
        print(f"nnc: error: {_limit_hint(a)}; {len(info.limits_hit)} part(s) not decoded, first: "
              f"{_one_line(info.limits_hit[0])}", file=sys.stderr)
        return 2
    return 0


def _cmd_check(a) -> int:
    from .conformance.checker import check

    data = _read_input(a.input)
    with _Progress(not (a.quiet or a.json)).phase(f"checking {a.input}"):
        bad = _problem(a.input, data, first_unit_only=True)
        if bad is not None:
            if a.json:  # scripts still get a report ("readable": false) on stdout
                print(json.dumps(check(data, config=_limits(a)).to_dict(), indent=1))
            raise bad  # not NNC at all: the same line as decode and info
        report = check(data, config=_limits(a))
        if report.errors:       # damaged or incomplete: the classification decode and info give
            bad = _problem_in(a.input, report)
    print(json.dumps(report.to_dict(), indent=1) if a.json else report.to_text())
    hit = report.find("LIMIT_EXCEEDED")
    if hit and report.ok:
        print(f"nnc: error: {_limit_hint(a)}; {len(hit)} part(s) not checked, first: {hit[0]}", file=sys.stderr)
        return 2
    if bad is None and any(v.code in _DAMAGE_CODES for v in report.errors):
        bad = _from_report(a.input, report)  # a payload nnc cannot decode: what `nnc decode` refuses too
    if bad is not None:
        raise bad
    return 0 if report.ok else 1


#: check findings that make nnc's decoder refuse the stream (the others are rule violations it can still decode)
_DAMAGE_CODES = {"PAYLOAD_SIZE_MISMATCH", "PAYLOAD_TRUNCATED", "PAYLOAD_CORRUPT", "CODEBOOK_INDEX_RANGE",
                 "TRUNCATED_UNIT", "TRAILING_BYTES", "UNIT_SIZE_INVALID", "UNIT_SIZE_MISMATCH", "TENSOR_MISSING"}


def _cmd_conform(a) -> int:
    from .conformance.suite import run_suite

    with decoder_limits(_limits(a)):
        result = run_suite(a.suite)
    print(json.dumps(result.to_dict(), indent=1) if a.json else result.to_text())
    return 0 if result.ok else 1


_COMMANDS = {"encode": _cmd_encode, "decode": _cmd_decode, "info": _cmd_info, "check": _cmd_check,
             "conform": _cmd_conform}


def _dispatch(a) -> int:
    if hasattr(a, "max_memory"):
        # the limits apply in the thread that runs the command (also to topology inflation and the converters)
        with decoder_limits(_limits(a)):
            return _COMMANDS[a.command](a)
    return _COMMANDS[a.command](a)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _STATE.committed = False
    old_term = _catch_sigterm()
    try:
        return _run_interruptibly(lambda: _dispatch(a))
    except LimitExceededError as e:
        if a.debug:
            raise
        print(f"nnc: error: {_one_line(e)} — {_limit_hint(a)}", file=sys.stderr)
        return 2
    except UnsupportedFeatureError as e:
        if a.debug:
            raise
        print(f"nnc: unsupported: {_one_line(e)}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        # the reader of our output went away (`nnc info x.nnc | head`): stop quietly, as Unix tools do, and
        # point stdout at /dev/null so the interpreter's final flush does not complain either
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (NNCError, OSError) as e:
        if a.debug:
            raise
        print(f"nnc: error: {_message(e)}", file=sys.stderr)
        return _exit_code(e)
    except KeyboardInterrupt:
        print("nnc: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug in nnc: one line, traceback only with --debug
        if a.debug:
            raise
        print(f"nnc: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 70
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _exit_code(e: BaseException) -> int:
    """1: a bitstream that is NNC but bad (damaged, incomplete, violating the syntax); 2: anything else."""
    code = getattr(e, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(e, BitstreamError) and not isinstance(e, LimitExceededError):
        return 1
    return 2


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}(?:\.[\w]+)?$")


def _user_path(path) -> str:
    """The path the user named, for a temporary file of nnc's atomic writer (``.model.nnc.ab12cd34.nnc``)."""
    text = os.fspath(path)
    m = _TEMP_NAME.match(os.path.basename(text))
    return os.path.join(os.path.dirname(text), m.group("name")) if m else text


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, NNCError):
        what = e.strerror or _one_line(e)
        what = what[:1].lower() + what[1:]
        if e.filename is None:
            return _one_line(f"{what}; check the disk and the permissions of the output folder")
        return _one_line(f"cannot use {_user_path(e.filename)}: {what}; check the path, the free space and the "
                         "permissions")
    msg = _one_line(e)
    advice = getattr(e, "advice", None)
    if advice is None and isinstance(e, ModelFormatError) and ";" not in msg:
        advice = ("check that the file is complete and in the format its extension names (nnc reads .onnx "
                  ".safetensors .npz .pt .pth .bin .ckpt .jit and model folders)")
    return f"{msg}; {advice}" if advice else msg


def _on_sigterm(signum, frame):
    # unwinds like an exception, so atomic writers delete their temporary file (the old output stays)
    raise SystemExit(128 + signum)


def _catch_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ERRNO = re.compile(r"\[Errno \d+\] ")


def _one_line(e: BaseException | str) -> str:
    text = _ERRNO.sub("", _ANSI.sub("", str(e)))
    return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
