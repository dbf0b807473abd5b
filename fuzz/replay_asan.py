"""Replay fuzz corpora (and random mutations of them) against the ASan/UBSan build of the C++ core.

Why a replay: GCC's libasan, preloaded into CPython, provides the __sanitizer_cov_* symbols that atheris'
libFuzzer needs for Python coverage, so coverage-guided fuzzing and the GCC sanitizers cannot share one
process (atheris warns "Coverage symbols are being provided by a library other than libFuzzer"; clang is
not installed here). The campaign therefore fuzzes with coverage on the Release core (fuzz/run.sh with
NNC_FUZZ_ASAN=0) and replays here everything it kept, plus fresh mutations, with the sanitizers armed.

    fuzz/replay_asan.sh decode update fl ...        (sets LD_PRELOAD and NNC_CORE_SO, then runs this)

Prints one JSON line per harness: inputs replayed, mutations run, findings. Exit 1 on any finding;
an ASan/UBSan report aborts the process (non-zero exit, report on stderr).
"""
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import check_core, load_core_override  # noqa: E402


def mutate(rng, blob: bytes, donors) -> bytes:
    data = bytearray(blob)
    for _ in range(int(rng.integers(1, 9))):
        if not data:
            data = bytearray(rng.integers(0, 256, size=4, dtype=np.uint8).tobytes())
        pos = int(rng.integers(0, len(data)))
        op = int(rng.integers(0, 6))
        if op == 0:
            data[pos] = int(rng.integers(0, 256))
        elif op == 1:
            data[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            del data[pos:pos + int(rng.integers(1, 16))]
        elif op == 3:
            data[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif op == 4:
            donor = donors[int(rng.integers(0, len(donors)))]
            a = int(rng.integers(0, len(donor)))
            data[pos:] = donor[a:a + int(rng.integers(1, 256))] + data[pos:]
        else:
            w = int(rng.choice([1, 2, 4]))
            data[pos:pos + w] = int(rng.choice([0, 0xFF, 0x7F, 0x80])).to_bytes(1, "big") * w
    return bytes(data)


def replay(name: str, mutations: int, seed: int) -> dict:
    mod = importlib.import_module(f"fuzz_{name}")
    out = HERE / "out" / name
    files = [p for d in ("corpus", "seeds") for p in sorted((out / d).glob("*")) if p.is_file()]
    files += sorted(out.glob("crash-*")) + sorted(out.glob("timeout-*")) + sorted(out.glob("oom-*"))
    blobs = [p.read_bytes() for p in files]
    findings = []
    t = time.perf_counter()

    def run(data: bytes, label: str):
        try:
            mod.TestOneInput(data)
        except Exception as e:  # noqa: BLE001 - any escape is a finding
            findings.append({"input": label, "error": f"{type(e).__name__}: {e}", "hex": data[:256].hex()})

    for p, b in zip(files, blobs):
        run(b, str(p.relative_to(HERE)))
    rng = np.random.default_rng(seed)
    for i in range(mutations):
        src = blobs[int(rng.integers(0, len(blobs)))]
        run(mutate(rng, src, blobs), f"mutation {i} (seed {seed})")
    return {"harness": name, "corpus_inputs": len(files), "mutations": mutations,
            "seed": seed, "total": len(files) + mutations, "findings": len(findings), "details": findings[:5],
            "seconds": round(time.perf_counter() - t, 1)}


def main(argv):
    so = load_core_override()
    import nnc  # noqa: F401
    check_core(so)
    mutations = int(os.environ.get("NNC_REPLAY_MUTATIONS", "20000"))
    bad = 0
    for name in argv or ["decode", "inspect", "check", "update", "fl"]:
        r = replay(name, mutations, seed=int(os.environ.get("NNC_REPLAY_SEED", "17")))
        print(json.dumps(r), flush=True)
        bad += r["findings"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
