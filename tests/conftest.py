"""Shared fixtures: tiny synthetic data, a subprocess runner for the entry points."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segflow.conf.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "segflow" / "conf"
register_resolvers()  # the configs' resolvers, as every entry point registers them

# Small enough for 2 CPU cores: 64 px synthetic images, 32 px crops, 4-channel nets.
TINY = [
    "data.synthetic.image_size=64", "data.synthetic.n_train=6", "data.synthetic.n_val=2",
    "data.synthetic.n_test=2", "data.image_size=32", "data.train_bs=2",
    "data.num_samples_per_image=2", "data.num_workers=0", "model.net.base_channels=4",
]


def shared_data_dir() -> Path | None:
    """The real public datasets beside the project (``../shared/data``) or $SEGFLOW_SHARED_DATA."""
    p = Path(os.environ.get("SEGFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return p if p.is_dir() else None


def require_shared_data() -> Path:
    """The shared real data; skip (or fail in CI, where SEGFLOW_REQUIRE_SHARED_DATA=1) when absent."""
    p = shared_data_dir()
    if p is None:
        msg = "../shared/data (the real public datasets) is not present in this clone"
        if os.environ.get("SEGFLOW_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " but SEGFLOW_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(msg)
    return p


@pytest.fixture(autouse=True)
def _roots_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """Every test writes runs and generated data under a temporary folder, never into the
    repository's ``outputs/`` or ``data/`` (tests may still set their own)."""
    root = tmp_path_factory.mktemp("roots")
    monkeypatch.setenv("SEGFLOW_OUTPUT_DIR", str(root / "outputs"))
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(root / "data"))


@pytest.fixture
def shared_data() -> Path:
    """See :func:`require_shared_data`."""
    return require_shared_data()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory with its own outputs/ and data/ (via env vars)."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def run_entry(module: str, args: list[str], workdir: Path, timeout: float = 300,
              env: dict[str, str] | None = None,
              unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` in ``workdir`` with outputs/data kept inside it
    (``unset``: prefixes of environment variables to leave out, e.g. ``SLURM_``)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(unset or ("\0",))}
    full_env = {**inherited, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
                "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT),
                "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(workdir: Path, kind: str = "runs") -> list[Path]:
    """Run folders (those holding .hydra/) under outputs/<kind>/."""
    return sorted(p.parent for p in (workdir / "outputs" / kind).rglob(".hydra"))


@pytest.fixture
def train(workdir: Path):
    """Run segflow.train with the TINY overrides; assert success; return the run folder."""

    def _train(*overrides: str, expect_ok: bool = True) -> tuple[subprocess.CompletedProcess, Path | None]:
        before = set(run_dirs(workdir))
        flags = [o for o in overrides if o.startswith("-")]  # e.g. -m must precede the overrides
        rest = [o for o in overrides if not o.startswith("-")]
        real = any(o.startswith("data=") and not o.startswith("data=synthetic") for o in rest)
        tiny = [t for t in TINY if not (real and t.startswith("data.synthetic"))]
        proc = run_entry("segflow.train", [*flags, *tiny, "debug=default", *rest], workdir)
        if expect_ok:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        new = sorted(set(run_dirs(workdir)) - before)
        return proc, (new[-1] if new else None)

    return _train


# -- trained tiny runs shared by the eval / predict / report / notebook tests ------------
TESTS = Path(__file__).resolve().parent
# PYTHONPATH and Hydra search path that make the test-only toy generative model
# (tests/toy_generative.py, tests/conf/model/toy_flow.yaml) available to the entry points.
TOY_ENV = {"PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
TOY_SEARCHPATH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"


def fake_srun_env(folder: Path) -> dict[str, str]:
    """PATH with an ``srun`` executable first, as on a machine where SLURM is installed
    (Lightning then hints at srun in every Trainer); run with ``unset=("SLURM_",)``, i.e.
    outside a SLURM job, whatever the host."""
    folder.mkdir(parents=True, exist_ok=True)
    srun = folder / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


class TinyRuns:
    """Trains each tiny run once per test session (lazily), in one shared work folder, on
    a host that looks the same everywhere: ``srun`` on PATH, no SLURM job."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._runs: dict[str, Path] = {}

    def get(self, model: str = "unet") -> Path:
        """The run folder of a tiny 2-epoch run of ``model`` (``unet`` or ``toy_flow``)."""
        if model not in self._runs:
            args = [*TINY, "debug=default", "trainer.max_epochs=2", f"model={model}",
                    f"experiment_name=tiny_{model}", TOY_SEARCHPATH]
            env = {**TOY_ENV, **fake_srun_env(self.workdir / "bin")}
            proc = run_entry("segflow.train", args, self.workdir, env=env, unset=("SLURM_",))
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            runs = [r for r in run_dirs(self.workdir) if r.parent.name == f"tiny_{model}"]
            assert len(runs) == 1, runs
            self._runs[model] = runs[0]
        return self._runs[model]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    work = tmp_path_factory.mktemp("tiny_runs")
    (work / "outputs").mkdir()
    (work / "data").mkdir()
    return TinyRuns(work)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """``prepared(kind, native_subfolder, **options)`` → a folder-layout copy of a shared
    dataset, made once per test session with ``segflow.prepare`` (skips/fails like
    ``shared_data`` when the real data is absent)."""
    cache: dict[tuple, Path] = {}

    def _prepare(kind: str, native: str, **options) -> Path:
        src = require_shared_data()
        key = (kind, native, tuple(sorted(options.items())))
        if key not in cache:
            from segflow.data.prepare.layout import prepare

            dest = tmp_path_factory.mktemp("prepared") / f"{kind}_{len(cache)}"
            prepare(kind, src / native, dest, **options)
            cache[key] = dest
        return cache[key]

    return _prepare


def assert_learned(metrics: dict, dice_floor: float = 0.0, auc_floor: float | None = None) -> None:
    """Test metrics that a broken model cannot produce: finite Dice above ``dice_floor``
    (an empty or NaN prediction scores 0 / NaN; runs of one or two steps are not trained
    enough for more) and, where given, AUC above ``auc_floor`` (a constant output scores
    0.5). ``0 <= dice <= 1`` alone passes for an empty mask."""
    dice = float(metrics["dice"])
    assert math.isfinite(dice) and dice_floor < dice <= 1.0, metrics
    if auc_floor is not None:
        auc = float(metrics["auc"])
        assert math.isfinite(auc) and auc_floor < auc <= 1.0, metrics
