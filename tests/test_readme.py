"""The README stays true: its Python examples run, and .ci/run runs exactly its test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_cmd = next(c.strip() for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, "the README's test command is not a line of .ci/run"


def _setup_command():
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return next(c.strip() for c in commands if "nnc encode" in c)


def test_setup_command_locates_the_model_without_importing_its_package():
    # The package is installed with --no-deps, so importing it can fail on a fresh machine (silero_vad needs
    # `packaging`): the command must find the model file without running the package's __init__.
    import subprocess
    import sys

    snippet = re.search(r"python -c '([^']*)'", _setup_command()).group(1)
    package = re.search(r'find_spec\("(\w+)"\)', snippet)
    assert package, "the set-up command should locate the model with importlib.util.find_spec"
    pkg = package.group(1)
    import importlib.util

    import pytest

    if importlib.util.find_spec(pkg) is None:
        pytest.skip(f"{pkg} is not installed")
    probe = (f"import sys\nexec({snippet!r})\n"
             f"assert not any(m == {pkg!r} or m.startswith({pkg!r} + '.') for m in sys.modules), 'imported'\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_file()


def test_setup_command_encodes_and_reports_size_and_error(tmp_path):
    import importlib.util
    import subprocess

    import pytest

    if importlib.util.find_spec("silero_vad") is None:
        pytest.skip("silero-vad is not installed")
    steps = _setup_command().split(" && ")
    main_job = " && ".join(s for s in steps if not s.startswith("pip "))
    assert main_job.startswith("nnc encode")
    out = subprocess.run(["bash", "-c", main_job], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"bitstream [\d,]+ bytes", out.stdout), out.stdout
    assert re.search(r"max \|w - w\^\| [\d.e-]+", out.stdout), out.stdout
    written = Path(re.search(r" -o (\S+)", main_job).group(1))
    assert (written if written.is_absolute() else tmp_path / written).stat().st_size > 1000


def test_repository_paths_named_in_the_docs_exist():
    # every file path (a name with an extension) under a top-level folder of the repository that README.md or
    # docs/*.md mentions must exist; globs must match something
    import glob

    folders = "tests|benchmarks|docs|nnc|tools|fuzz|conformance|\\.ci"
    pattern = re.compile(rf"(?<![\w/.-])((?:{folders})/[\w./*-]*\.[\w*]+)")
    missing = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in set(pattern.findall(md.read_text())):
            path = path.rstrip(".")
            found = glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()
            if not found:
                missing.append(f"{md.relative_to(ROOT)}: {path}")
    assert not missing, missing
