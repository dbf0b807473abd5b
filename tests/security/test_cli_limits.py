"""Issue 15 items 4-5 on the command line: --max-memory / --strict on decode, info, check and conform, an
error naming the flag when a limit stops a file, and exit 2 (bad input), never 70, for hostile files."""
import subprocess
import sys

import pytest

from _bombs_path import MB
import bombs
from nnc.cli import main


def _write(tmp_path, data, name="bomb.nnc"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("cmd", ["decode", "info", "check"])
def test_a_limit_stops_the_file_and_the_error_names_the_flag(tmp_path, capsys, cmd):
    path = _write(tmp_path, bombs.many_tensors(256 * MB))
    argv = [cmd, path, "--max-memory", "64M", "--strict"] + (["-o", str(tmp_path / "o.npz")] if cmd == "decode" else [])
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--max-memory" in err and "limit" in err
    assert not (tmp_path / "o.npz").exists()


def test_the_same_file_decodes_with_a_larger_limit(tmp_path, capsys):
    path = _write(tmp_path, bombs.many_tensors(16 * MB))       # 64 zero tensors of 1 MiB
    assert main(["decode", path, "-o", str(tmp_path / "o.npz"), "--max-memory", "256M"]) == 0
    assert main(["info", path, "--max-memory", "1G", "--strict"]) == 0


def test_max_memory_sizes_and_the_desktop_default():
    from nnc.cli import _size, build_parser, default_max_memory
    assert _size("512M") == 512 * MB and _size("4G") == 4 << 30 and _size("1073741824") == 1 << 30
    assert _size("1.5GiB") == 3 << 29
    assert 1 << 30 <= default_max_memory() <= 16 << 30
    with pytest.raises(SystemExit):
        build_parser().parse_args(["info", "x", "--max-memory", "lots"])


@pytest.mark.parametrize("bomb", ["codebook_overflow", "hostile_topology_json", "deep_topology_json",
                                  "int_as_float16", "amplify_over_limit"])
def test_hostile_bitstreams_exit_1_or_2_never_70(tmp_path, bomb):
    # docs/errors.md: 1 = an NNC bitstream that is damaged (hostile values included), 2 = a limit, a model file
    # or topology nnc cannot read; 70 (an internal error) never
    path = _write(tmp_path, getattr(bombs, bomb)())
    r = subprocess.run([sys.executable, "-m", "nnc.cli", "decode", path, "-o", str(tmp_path / "o.npz"),
                        "--strict"], capture_output=True, text=True, timeout=120)
    assert r.returncode == {"codebook_overflow": 1, "int_as_float16": 1}.get(bomb, 2), r.stderr
    assert "internal error" not in r.stderr and r.stderr.startswith("nnc: error:"), r.stderr
