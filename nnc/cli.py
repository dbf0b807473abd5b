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

from .errors import LimitExceededError, NNCError, UnsupportedFeatureError

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
    e.add_argument("--threads", type=int, default=1, help="tensors coded in parallel")
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
    d.add_argument("--threads", type=int, default=1)
    _add_limit_flags(d)

    i = sub.add_parser("info", help="unit-by-unit summary of a bitstream")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    _add_limit_flags(i)

    c = sub.add_parser("check", help="check a bitstream for conformance")
    c.add_argument("input")
    c.add_argument("--json", action="store_true")
    _add_limit_flags(c)

    f = sub.add_parser("conform", help="run a conformance suite folder")
    f.add_argument("suite", nargs="?", default="conformance")
    f.add_argument("--impl", choices=["nnc", "reference", "both"], default="nnc")
    f.add_argument("--json", action="store_true")
    _add_limit_flags(f)
    return p


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
                    help="limits for files from strangers: DecoderConfig.strict() (65536 units, tensors of at most "
                         "max-memory/4 elements, 1 GiB unless --max-memory)")


def _limits(a):
    from .config import DecoderConfig
    threads = max(1, getattr(a, "threads", 1) or 1)
    if a.strict:
        return DecoderConfig.strict(max_total_bytes=a.max_memory or (1 << 30), threads=threads)
    return DecoderConfig(max_total_bytes=a.max_memory or default_max_memory(), threads=threads)


def _limit_hint(a, what: str = "") -> str:
    cfg = _limits(a)
    return (f"{what}a decoding limit stopped {getattr(a, 'input', None) or getattr(a, 'suite', '')}: rerun with "
            f"--max-memory SIZE above {cfg.max_total_bytes} bytes"
            + (" or without --strict" if a.strict else "") + " if you trust the file")


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


def _cmd_encode(a) -> int:
    from . import converters
    from .codec import Encoder, decode
    from .config import EncoderConfig
    from ._atomic import write_bytes_atomic

    cfg = EncoderConfig(qp=a.qp, qp_density=a.qp_density, nonweight_qp=a.nonweight_qp,
                        qp_per_tensor=dict(a.qp_per_tensor), dq=not a.no_dq, row_skipping=not a.no_row_skipping,
                        param_opt=not a.no_param_opt, scan_order=a.scan_order, threads=a.threads,
                        codebook=a.codebook, bitdepth=a.bitdepth, opt_qp=a.opt_qp, sparsity=a.sparsity,
                        struct_sparsity=a.struct_sparsity, target_bits_per_param=a.bits_per_param,
                        max_rel_error=a.max_rel_error)
    t0 = time.perf_counter()
    model = converters.load_model(a.input, format=a.format)
    t_load = time.perf_counter() - t0
    enc = Encoder(cfg)
    t0 = time.perf_counter()
    data = enc.encode(model.tensors, topology=model.topology, progress=not (a.quiet or a.json))
    t_enc = time.perf_counter() - t0
    write_bytes_atomic(a.output, data)
    n_params = sum(int(np.asarray(v).size) for v in model.tensors.values())
    orig_bytes = sum(int(np.asarray(v).nbytes) for v in model.tensors.values())
    summary = {"input": a.input, "output": a.output, "tensors": len(model.tensors), "parameters": n_params,
               "input_bytes": orig_bytes, "bitstream_bytes": len(data),
               "ratio": orig_bytes / len(data), "bits_per_param": 8 * len(data) / max(n_params, 1),
               "load_s": t_load, "encode_s": t_enc}
    if not a.no_verify:
        t0 = time.perf_counter()
        dec = decode(data)
        summary["decode_s"] = time.perf_counter() - t0
        summary.update(_error_stats(model.tensors, dec))
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"{a.input} -> {a.output}")
        print(f"  tensors {summary['tensors']}, parameters {n_params:,}, input {orig_bytes:,} bytes")
        print(f"  bitstream {len(data):,} bytes  (ratio {summary['ratio']:.2f}x, "
              f"{summary['bits_per_param']:.3f} bits/param)")
        if "max_abs_err" in summary:
            print(f"  error: max |w - w^| {summary['max_abs_err']:.3g}, relative L2 {summary['rel_l2']:.3g}")
        print(f"  encode {t_enc:.2f} s" + (f", decode {summary['decode_s']:.2f} s" if "decode_s" in summary else ""))
    return 0


def _cmd_decode(a) -> int:
    from . import converters
    from .codec import Decoder
    from .config import decoder_limits

    data = _read_input(a.input)
    cfg = _limits(a)
    dec = Decoder(cfg)
    model = dec._decode(data, keep_levels=False)      # levels freed per tensor
    left = max(1, cfg.max_total_bytes - dec.last_budget.used)
    with decoder_limits(cfg.replace(max_total_bytes=left)):       # topology inflation: what the budget has left
        converters.save_model(a.output, model.tensors, model.topology, format=a.format, template=a.template)
    print(f"{a.input} -> {a.output}: {len(model.tensors)} tensors")
    return 0


def _cmd_info(a) -> int:
    from .inspect import inspect as inspect_bitstream

    info = inspect_bitstream(_read_input(a.input), config=_limits(a))
    print(json.dumps(info.to_dict(), indent=1) if a.json else info.to_text())
    if info.limits_hit:
        print(f"nnc: error: {_limit_hint(a)}; {len(info.limits_hit)} part(s) not decoded, first: "
              f"{_one_line(info.limits_hit[0])}", file=sys.stderr)
        return 2
    first = info.units[0] if info.units else None
    if first is None or first.type in ("unknown",) or first.type.startswith("reserved") or \
            (first.errors and first.header_size is None and first.type != "NNR_STR"):
        print(f"nnc: error: {a.input} is not an NNC bitstream (no readable first unit)", file=sys.stderr)
        return 2
    return 0


def _cmd_check(a) -> int:
    from .conformance.checker import check

    report = check(_read_input(a.input), config=_limits(a))
    print(json.dumps(report.to_dict(), indent=1) if a.json else report.to_text())
    if not report.readable:
        return 2  # not an NNC bitstream at all (empty, or no readable first unit)
    hit = report.find("LIMIT_EXCEEDED")
    if hit and report.ok:
        print(f"nnc: error: {_limit_hint(a)}; {len(hit)} part(s) not checked, first: {hit[0]}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def _cmd_conform(a) -> int:
    from .conformance.suite import run_suite

    from .config import decoder_limits

    with decoder_limits(_limits(a)):
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
        if hasattr(a, "max_memory"):
            from .config import decoder_limits
            with decoder_limits(_limits(a)):      # also topology inflation and converters during decode
                return _COMMANDS[a.command](a)
        return _COMMANDS[a.command](a)
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
