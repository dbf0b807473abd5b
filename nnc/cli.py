"""The ``nnc`` command line: encode, decode, info, check, conform.

Every subcommand is a function of parsed arguments returning an exit status, so tests call
``main([...])`` directly. Errors print one line (``nnc: error: ...``) and map to exit codes:
0 success, 1 non-conforming bitstream (``check``) or failed suite (``conform``), 2 unreadable input or bad
usage, 3 unsupported feature, 70 internal error (a bug), 130 interrupted. ``--debug`` shows the traceback
instead (docs/errors.md).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .errors import NNCError, UnsupportedFeatureError

__all__ = ["build_parser", "main"]


def _qp_override(text: str) -> tuple[str, int]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=QP, got {text!r}")
    try:
        return pattern, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"QP in {text!r} is not an integer") from None


# nnc.converters.FORMATS' names (not imported here: the CLI starts without loading the converters)
_FORMAT_CHOICES = ("onnx", "pytorch", "safetensors", "npz")


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
    p = argparse.ArgumentParser(prog="nnc", description="MPEG NNC (ISO/IEC 15938-17) neural network coding")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", help="encode a model file (.npz .safetensors .pt/.pth/.bin/.jit .onnx) to .nnc")
    e.add_argument("input")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--format", choices=_FORMAT_CHOICES, default=None,
                   help="input model format when the extension does not tell (e.g. pytorch for a .bin file)")
    e.add_argument("--qp", type=int, default=-38, help="QP of weight tensors (rank > 1); default -38")
    e.add_argument("--qp-density", type=int, default=2, help="QP steps per octave = 2**density; default 2")
    e.add_argument("--nonweight-qp", type=int, default=-75, help="QP of rank <= 1 tensors; default -75")
    e.add_argument("--qp-per-tensor", type=_qp_override, action="append", default=[], metavar="PATTERN=QP",
                   help="override the QP of tensors whose name matches the fnmatch PATTERN (repeatable)")
    e.add_argument("--no-dq", action="store_true", help="uniform instead of dependent (trellis) quantisation")
    e.add_argument("--no-row-skipping", action="store_true", help="do not signal all-zero rows")
    e.add_argument("--no-param-opt", action="store_true", help="no context-initialisation optimisation")
    e.add_argument("--scan-order", type=int, default=0, help="0 row-major, 1..4 block scans")
    e.add_argument("--threads", type=int, default=None,
                   help="tensors coded in parallel (default: every CPU; the output does not depend on it)")
    e.add_argument("--codebook", choices=["off", "auto", "force"], default="off",
                   help="codebook quantisation: auto = per tensor when smaller (NNCodec codebook_mode 2); slow "
                        "at fine QPs (one trial encode per distinct level, as NNCodec), meant for low bit depths")
    e.add_argument("--bitdepth", type=int, default=None, metavar="N",
                   help="integer-aligned mode: per-tensor qps so that levels fit N-bit integers (1..31)")
    e.add_argument("--opt-qp", action="store_true", help="NNCodec's per-tensor QP heuristic (sizes, spreads)")
    e.add_argument("--sparsity", type=float, default=None, metavar="FRACTION",
                   help="unstructured sparsification before quantisation, target fraction of zeros (0..1)")
    e.add_argument("--struct-sparsity", type=float, default=None, metavar="GAIN",
                   help="structured sparsification: zero output channels below GAIN x mean magnitude")
    rc = e.add_mutually_exclusive_group()
    rc.add_argument("--bits-per-param", type=float, default=None,
                    help="rate control: choose per-tensor QPs for about this many bits per float parameter")
    rc.add_argument("--max-rel-error", type=float, default=None,
                    help="rate control: coarsest QP per tensor with relative RMS error <= this")
    e.add_argument("--no-verify", action="store_true", help="skip decoding back to report the error")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("decode", help="decode .nnc to .npz / .safetensors / .pt / .onnx")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--format", choices=_FORMAT_CHOICES, default=None,
                   help="output model format when the extension does not tell")
    d.add_argument("--template", default=None, metavar="ORIGINAL.jit",
                   help="write a TorchScript archive: this program with the decoded weights (nothing is run)")
    d.add_argument("--threads", type=int, default=None,
                   help="decode threads (default: every CPU): NDUs in parallel, and block rows with entry points")
    d.add_argument("--shard-size", type=_size, default=None, metavar="SIZE",
                   help="write a Hugging Face sharded safetensors checkpoint with shards of at most SIZE "
                        "(e.g. 5GB, 500MB); -o DIR/ shards at 5GB by default")

    i = sub.add_parser("info", help="unit-by-unit summary of a bitstream")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")

    c = sub.add_parser("check", help="check a bitstream for conformance")
    c.add_argument("input")
    c.add_argument("--json", action="store_true")

    f = sub.add_parser("conform", help="run a conformance suite folder")
    f.add_argument("suite", nargs="?", default="conformance")
    f.add_argument("--impl", choices=["nnc", "reference", "both"], default="nnc")
    f.add_argument("--json", action="store_true")
    return p


def _read_input(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror}") from None


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


class _StreamingError:
    """_error_stats, accumulated tensor by tensor (so that verifying never holds the whole model)."""

    def __init__(self):
        self.sq = self.ref = self.max_abs = 0.0
        self.n = 0

    def add(self, a, b) -> None:
        a64 = np.asarray(a).astype(np.float64).reshape(-1)
        err = np.abs(a64 - np.asarray(b).astype(np.float64).reshape(-1))
        if err.size:
            self.max_abs = max(self.max_abs, float(err.max()))
        self.sq += float(np.dot(err, err))
        self.ref += float(np.dot(a64, a64))
        self.n += a64.size

    def result(self) -> dict:
        return {"max_abs_err": self.max_abs, "rel_l2": (self.sq ** 0.5 / self.ref ** 0.5) if self.ref > 0 else 0.0,
                "mse": self.sq / max(self.n, 1)}


def _cmd_encode(a) -> int:
    from . import converters
    from .codec import Decoder, Encoder
    from .config import DecoderConfig, EncoderConfig

    cfg = EncoderConfig(qp=a.qp, qp_density=a.qp_density, nonweight_qp=a.nonweight_qp,
                        qp_per_tensor=dict(a.qp_per_tensor), dq=not a.no_dq, row_skipping=not a.no_row_skipping,
                        param_opt=not a.no_param_opt, scan_order=a.scan_order, threads=a.threads,
                        codebook=a.codebook, bitdepth=a.bitdepth, opt_qp=a.opt_qp, sparsity=a.sparsity,
                        struct_sparsity=a.struct_sparsity, target_bits_per_param=a.bits_per_param,
                        max_rel_error=a.max_rel_error)
    t0 = time.perf_counter()
    model = converters.open_model(a.input, format=a.format)   # safetensors: lazily, one tensor at a time
    t_load = time.perf_counter() - t0
    enc = Encoder(cfg)
    t0 = time.perf_counter()
    # written unit by unit as coded (atomically: a temporary file renamed at the end)
    done = enc.encode_to(a.output, model.tensors, topology=model.topology, progress=not (a.quiet or a.json))
    t_enc = time.perf_counter() - t0
    n_params, orig_bytes, size = done.parameters, done.input_bytes, done.bitstream_bytes
    summary = {"input": a.input, "output": a.output, "tensors": done.tensors, "parameters": n_params,
               "input_bytes": orig_bytes, "bitstream_bytes": size,
               "ratio": orig_bytes / size, "bits_per_param": 8 * size / max(n_params, 1),
               "load_s": t_load, "encode_s": t_enc}
    if not a.no_verify:
        t0 = time.perf_counter()
        stats = _StreamingError()
        for t in Decoder(DecoderConfig(threads=cfg.threads)).stream(Path(a.output), levels=False):
            stats.add(model.tensors[t.name], t.array)
        summary["decode_s"] = time.perf_counter() - t0
        summary.update(stats.result())
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"{a.input} -> {a.output}")
        print(f"  tensors {summary['tensors']}, parameters {n_params:,}, input {orig_bytes:,} bytes")
        print(f"  bitstream {size:,} bytes  (ratio {summary['ratio']:.2f}x, "
              f"{summary['bits_per_param']:.3f} bits/param)")
        if "max_abs_err" in summary:
            print(f"  error: max |w - w^| {summary['max_abs_err']:.3g}, relative L2 {summary['rel_l2']:.3g}")
        print(f"  encode {t_enc:.2f} s" + (f", decode {summary['decode_s']:.2f} s" if "decode_s" in summary else ""))
    return 0


def _cmd_decode(a) -> int:
    from . import converters
    from .codec import Decoder
    from .config import DecoderConfig

    out = a.output
    fmt = None if a.format is None else converters.detect_format(out, a.format)
    folder = out.endswith(("/", os.sep)) or os.path.isdir(out)
    streaming = a.template is None and (folder or a.shard_size is not None or fmt == "safetensors" or (
        fmt is None and out.lower().endswith(".safetensors")))
    if a.shard_size is not None and not streaming:
        from .errors import ConfigError
        raise ConfigError("--shard-size writes safetensors: give -o DIR/ or -o NAME.safetensors")
    if streaming:   # tensor by tensor from the memory-mapped bitstream into the output file(s)
        if not os.path.isfile(a.input):
            _read_input(a.input)   # the usual "cannot read" error
        stream = Decoder(DecoderConfig(threads=a.threads)).stream(Path(a.input), levels=False)
        paths = converters.save_model_streaming(out, stream, shard_size=a.shard_size, format=a.format)
        print(f"{a.input} -> {out}: {len(stream)} tensors in {len(paths)} file(s)")
        return 0
    data = _read_input(a.input)
    model = Decoder(DecoderConfig(threads=a.threads)).decode_model(data)
    converters.save_model(a.output, model.tensors, model.topology, format=a.format, template=a.template)
    print(f"{a.input} -> {a.output}: {len(model.tensors)} tensors")
    return 0


def _cmd_info(a) -> int:
    from .inspect import inspect as inspect_bitstream

    info = inspect_bitstream(_read_input(a.input))
    print(json.dumps(info.to_dict(), indent=1) if a.json else info.to_text())
    first = info.units[0] if info.units else None
    if first is None or first.type in ("unknown",) or first.type.startswith("reserved") or \
            (first.errors and first.header_size is None and first.type != "NNR_STR"):
        print(f"nnc: error: {a.input} is not an NNC bitstream (no readable first unit)", file=sys.stderr)
        return 2
    return 0


def _cmd_check(a) -> int:
    from .conformance.checker import check

    report = check(_read_input(a.input))
    print(json.dumps(report.to_dict(), indent=1) if a.json else report.to_text())
    if not report.readable:
        return 2  # not an NNC bitstream at all (empty, or no readable first unit)
    return 0 if report.ok else 1


def _cmd_conform(a) -> int:
    from .conformance.suite import run_suite

    result = run_suite(a.suite, impl=a.impl)
    print(json.dumps(result.to_dict(), indent=1) if a.json else result.to_text())
    return 0 if result.ok else 1


_COMMANDS = {"encode": _cmd_encode, "decode": _cmd_decode, "info": _cmd_info, "check": _cmd_check,
             "conform": _cmd_conform}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    old_term = _catch_sigterm()
    try:
        return _COMMANDS[a.command](a)
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
        print(f"nnc: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnc: interrupted", file=sys.stderr)
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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
