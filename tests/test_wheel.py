"""A real package: build a wheel, install it (non-editable) into a fresh venv, and run one
debug training and one predict with the console scripts from outside the repository.

No downloads: the wheel is built without build isolation (setuptools of this environment)
and installed with --no-deps; the fresh venv reaches the dependencies already installed
here through a .pth line (not segflow: that comes from the wheel only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, TINY


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _tracked_copy(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no outputs, no venv)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to list the sources")
def test_wheel_installs_and_runs_from_outside_the_repository(tmp_path):
    src = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(dist), str(src)], tmp_path, dict(os.environ))
    (wheel,) = dist.glob("segflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segflow/conf/train.yaml" in names and "segflow/conf/model/unet.yaml" in names
    assert not any(n.startswith("tests/") for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    # The dependencies installed here, reused (a path line: its own .pth files do not run,
    # so an editable segflow installed here stays invisible).
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
          "--no-index", str(wheel)], tmp_path, dict(os.environ))

    work = tmp_path / "elsewhere"  # outside the repository: no conf/, no segflow/ here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SEGFLOW_OUTPUT_DIR=str(work / "outputs"), SEGFLOW_DATA_DIR=str(work / "data"),
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", HYDRA_FULL_ERROR="0")
    where = _run([str(py), "-c", "import segflow; print(segflow.__file__)"], work, env).stdout
    assert where.strip().startswith(str(site)), where  # the wheel's copy, not the repository's
    _run([str(env_dir / "bin" / "segflow-train"), *TINY, "debug=default",
          "trainer.max_epochs=1", "experiment_name=wheel"], work, env)
    (run,) = [p.parent for p in (work / "outputs").rglob(".hydra")]
    assert (run / "metrics.json").is_file()

    inp = work / "new_images"
    inp.mkdir()
    cv2.imwrite(str(inp / "a.png"), (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8))
    _run([str(env_dir / "bin" / "segflow-predict"), f"run_dir={run}", f"input_dir={inp}",
          f"output_dir={work / 'pred'}", "device=cpu"], work, env)
    assert (work / "pred" / "a_mask.png").is_file() and (work / "pred" / "predictions.csv").is_file()
