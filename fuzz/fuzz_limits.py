"""Fuzz the decoder limits with large limits and size-dependent inputs (issue 15).

The fuzz input is not the bitstream itself but a recipe (atheris.FuzzedDataProvider): an attack class from
benchmarks/bombs.py, its sizes (claimed dimensions, codebook sizes and Exp-Golomb orders, entry-point and
unit counts, deflate expansion), a few byte edits of the built stream, and the entry point (decode, inspect,
check). Everything runs under ``DecoderConfig.strict(max_total_bytes=LIMIT)`` with LIMIT = 256 MiB, so
libFuzzer's ``-rss_limit_mb`` (fuzz/run.sh limits: 1.25 x LIMIT + 100 MB + the fuzzing process itself) and
``-timeout`` turn a limit that does not hold into a finding.

Contract: the entry point returns or raises ``nnc.NNCError``; decode's outputs fit ``max_total_bytes``.
"""
import sys
from pathlib import Path

from _common import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

LIMIT = 256 << 20
_cfg = None


def _build(fdp):
    import numpy as np

    import bombs
    import nnc
    from nnc import bitstream as bs
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:      # amplification: claimed dimensions and output dtype chosen by the fuzzer
        rows = fdp.ConsumeIntInRange(1, 64)
        cols = fdp.ConsumeIntInRange(1, 1 << 28)
        dtype = (np.float32, np.float64, np.float16)[fdp.ConsumeIntInRange(0, 2)]
        return bombs._zeros_stream(rows, cols, dtype)
    if kind == 1:      # codebook: size, order and delta pattern
        n = fdp.ConsumeIntInRange(1, 1 << 17)
        egk = fdp.ConsumeIntInRange(0, 15)
        delta = fdp.ConsumeIntInRange(0, (1 << 40))
        z = fdp.ConsumeIntInRange(0, n - 1)
        cb = bs.Codebook(codebook_egk=egk, codebook_size=n, codebook_center_offset=z - (n >> 1),
                         codebook_zero_value=fdp.ConsumeIntInRange(-1000, 1000),
                         codebook_delta_left=[delta] * z, codebook_delta_right=[delta] * (n - 1 - z))
        with bombs.fast_writer():
            try:
                return bombs._head() + bombs._ndu((fdp.ConsumeIntInRange(1, 4096), 4), codebook=cb)
            except nnc.ConfigError:
                return None
    if kind == 2:      # entry points: count and first dimension
        n = fdp.ConsumeIntInRange(0, 20000)
        rows = fdp.ConsumeIntInRange(1, 1 << 27)
        scan = fdp.ConsumeIntInRange(1, 4)
        eps = [(fdp.ConsumeIntInRange(0, 255), 0, fdp.ConsumeIntInRange(0, 1 << 20))] + [(0, 0, 0)] * n
        with bombs.fast_writer():
            try:
                return bombs._head() + bombs._ndu((rows, fdp.ConsumeIntInRange(2, 64)), scan_order=scan,
                                                  entry_points=eps)
            except nnc.ConfigError:
                return None
    if kind == 3:
        return bombs.many_units(fdp.ConsumeIntInRange(100, 64 * 1024))
    if kind == 4:
        return bombs.performance_maps(fdp.ConsumeIntInRange(1, 256 * 1024))
    if kind == 5:
        return bombs.element_names(fdp.ConsumeIntInRange(4, 64 * 1024))
    if kind == 6:
        return bombs.deflate_topology(fdp.ConsumeIntInRange(1, 64) << 20)
    return bombs.many_tensors(fdp.ConsumeIntInRange(1 << 20, 4 * LIMIT))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    global _cfg
    import atheris

    import nnc
    if _cfg is None:
        _cfg = nnc.DecoderConfig.strict(max_total_bytes=LIMIT)
    fdp = atheris.FuzzedDataProvider(data)
    stream = _build(fdp)
    if stream is None:
        return
    stream = bytearray(stream)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):                # a few edits anywhere in the stream
        if stream:
            stream[fdp.ConsumeIntInRange(0, len(stream) - 1)] = fdp.ConsumeIntInRange(0, 255)
    entry = fdp.ConsumeIntInRange(0, 2)
    try:
        if entry == 0:
            out = nnc.decode(bytes(stream), _cfg)
            assert sum(a.nbytes for a in out.values()) <= LIMIT
        elif entry == 1:
            nnc.inspect(bytes(stream), config=_cfg).to_text()
        else:
            nnc.check(bytes(stream), config=_cfg).to_text()
    except nnc.NNCError:
        return


if __name__ == "__main__":
    main(TestOneInput)
