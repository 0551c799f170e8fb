"""The Makefile: `make train` / `make test` alone work from a fresh clone (they create the
venv first), `make help` lists the targets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(folder: Path, *args: str) -> str:
    # Without the variables of an enclosing make (e.g. `make test PY=...` passes PY down).
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PY")}
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(folder), *args],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["train", "test"])
def test_train_and_test_create_the_venv_when_missing(tmp_path, target):
    shutil.copy(ROOT / "Makefile", tmp_path)
    lines = _make(tmp_path, "-n", target).splitlines()
    assert lines[0] == "python3 -m venv .venv", lines
    assert lines[1].startswith(".venv/bin/pip install -e"), lines
    assert lines[2].startswith(".venv/bin/python -m "), lines
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    lines = _make(tmp_path, "-n", target).splitlines()
    assert lines[0].startswith(".venv/bin/python -m "), lines  # present: used as is


def test_another_python_is_used_without_a_venv(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    out = _make(tmp_path, "-n", "test", "PY=/usr/bin/python3")
    assert "venv" not in out and out.startswith("/usr/bin/python3 -m pytest")


def test_help_lists_every_documented_target():
    text = (ROOT / "Makefile").read_text()
    documented = re.findall(r"^([a-zA-Z_-]+):[^\n]*## ", text, flags=re.M)
    out = _make(ROOT, "help")
    for target in documented:
        assert re.search(rf"^  make {re.escape(target)}\s+\S", out, flags=re.M), target
    assert {"train", "test", "help", "bench", "install"} <= set(documented)


def test_compare_passes_seeds_and_refuses_an_empty_model_list(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    line = _make(tmp_path, "-n", "compare", "DATA=dca1", "SEEDS=0,1,2").splitlines()[-1]
    assert "-m segflow.compare --data dca1 --models unet,csnet,medsegdiff_small,flow_small --seeds 0,1,2" in line
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PY")}
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "compare", "MODELS=",
                           "ARGS=debug=default"], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0 and "MODELS is empty" in proc.stdout + proc.stderr


def test_install_takes_a_cpu_torch_only_when_asked(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    default = _make(tmp_path, "-n", "install").splitlines()
    assert default == ["python3 -m venv .venv", '.venv/bin/pip install -e ".[dev]"']  # unchanged
    cpu = _make(tmp_path, "-n", "install", "CPU=1").splitlines()
    assert cpu[0] == "python3 -m venv .venv" and cpu[2] == default[1]
    # torch first, from PyTorch's CPU index, in pyproject's range: the editable install keeps it
    pyproject = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"(torch[<>=][^"]*)"', pyproject)
    assert cpu[1] == f'.venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "{spec}"'


def test_train_alone_is_the_first_run_and_any_args_the_full_recipe(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    assert _make(tmp_path, "-n", "train").strip() == ".venv/bin/python -m segflow.train experiment=first_run"
    assert _make(tmp_path, "-n", "train", "PRESET=").strip() == ".venv/bin/python -m segflow.train"
    assert _make(tmp_path, "-n", "train", "ARGS=model=csnet").strip() == \
        ".venv/bin/python -m segflow.train model=csnet"
    assert (ROOT / "segflow" / "conf" / "experiment" / "first_run.yaml").is_file()
