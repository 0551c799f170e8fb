"""Where every output goes: the one owner of output paths (:class:`Layout`, the folders
under ``paths.output_root``; :class:`RunFolder` / :class:`EvalFolder`, the files inside a run
and an evaluation), folders claimed atomically, and the finders over them.

Under the output root (``paths.output_root``; its default is ``$SEGFLOW_OUTPUT_DIR`` or
``outputs``)::

    runs/<experiment>/<time>/               a single run      (Layout.run)
    multirun/<sweep>/<time>/<job>/          a sweep's jobs    (Layout.sweep)
    reports/<time>/                         segflow.report of several paths (Layout.report)
    compare/<sweep>/<time>/                 segflow.compare   (Layout.comparison)
    bench/<time>/, profile/<time>/, gpu_check/<time>/   benchmarks (Layout.tool)

Inside a run folder (:class:`RunFolder`): ``.hydra/``, ``metrics.json``, ``checkpoints/``,
``eval/<tag>/`` (:class:`EvalFolder`), ``predict/<input>-<hash>/``, ``export/<format>/``,
``report/``, ``tensorboard/``, ``csv/``.

A folder is *claimed* with an atomic ``mkdir`` (``exist_ok=False``): when the name is taken —
two runs started in the same second, an earlier evaluation of the same setting, a second
prediction of one input folder — the next free suffix ``_1``, ``_2``, ... is taken instead.
Two processes never share a folder. The Hydra resolvers of :mod:`segflow.conf.resolvers` are
one-line calls to the functions here.

Standard library only (no torch, no Hydra).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segflow.infra.errors import ConfigError, DataError, SegflowError
from segflow.infra.validate import check_name
from segflow.runs.failed import FAILED, is_failed, print_skipped

#: The environment variable that is the default of ``paths.output_root``.
OUTPUT_ENV = "SEGFLOW_OUTPUT_DIR"
#: The time stamp of a new folder (Hydra's ``${now:...}`` uses the same).
STAMP = "%Y-%m-%d_%H-%M-%S"


def stamp() -> str:
    """Now, as a folder name."""
    return time.strftime(STAMP)


def default_root() -> str:
    """``paths.output_root``'s default: ``$SEGFLOW_OUTPUT_DIR``, else ``outputs``."""
    return os.environ.get(OUTPUT_ENV) or "outputs"


@dataclass(frozen=True)
class Layout:
    """The folders under one output root (``paths.output_root``)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> Layout:
        """The layout of ``root`` (``paths.output_root``), else of :func:`default_root`."""
        return cls(Path(str(root)) if root not in (None, "") else Path(default_root()))

    @classmethod
    def from_overrides(cls, overrides: Iterable[str]) -> Layout:
        """The layout a command line of ``key=value`` overrides trains into: its
        ``paths.output_root=`` if given (last one wins), else the default."""
        root = None
        for item in overrides:
            key, sep, value = str(item).lstrip("+~").partition("=")
            if sep and key == "paths.output_root":
                root = value
        return cls.at(root)

    def runs(self, experiment: str) -> Path:
        return self.root / "runs" / check_name("experiment_name", experiment)

    def run(self, experiment: str, when: str) -> Path:
        """``<root>/runs/<experiment>/<when>`` (a single ``segflow.train``)."""
        return self.runs(experiment) / when

    def sweeps(self, sweep: str) -> Path:
        return self.root / "multirun" / check_name("sweep_name", sweep)

    def sweep(self, sweep: str, when: str) -> Path:
        """``<root>/multirun/<sweep>/<when>`` (a multirun; its jobs are sub-folders)."""
        return self.sweeps(sweep) / when

    def report(self, when: str | None = None) -> Path:
        return self.root / "reports" / (when or stamp())

    def comparison(self, sweep: str, when: str | None = None) -> Path:
        return self.root / "compare" / check_name("--name", sweep) / (when or stamp())

    def resumable(self) -> list[Path]:
        """Every checkpoint ``resume=auto`` may continue from: ``last.ckpt`` and SLURM's
        ``hpc_ckpt_<n>.ckpt`` of single runs and of sweep jobs."""
        runs, sweeps = self.root / "runs", self.root / "multirun"
        return [*runs.glob("*/*/checkpoints/last.ckpt"), *runs.glob("*/*/hpc_ckpt_*.ckpt"),
                *sweeps.glob("**/checkpoints/last.ckpt"), *sweeps.glob("**/hpc_ckpt_*.ckpt")]

    def tool(self, kind: str, when: str | None = None) -> Path:
        """``<root>/<kind>/<when>`` of a benchmark tool (``bench``, ``profile``, ``gpu_check``)."""
        return self.root / kind / (when or stamp())


@dataclass(frozen=True)
class EvalFolder:
    """One evaluation: ``<run>/eval/<tag>/`` (or a grid's ``grid_<tag>/``)."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def per_image(self) -> Path:
        return self.path / "per_image.csv"

    @property
    def images(self) -> Path:
        return self.path / "images"

    def file(self, name: str) -> Path:
        """A table or plot of this evaluation (``grid.csv``, ``dice_vs_nfe.png``)."""
        return self.path / name


@dataclass(frozen=True)
class SweepFolder:
    """The files of one multirun folder (``<root>/multirun/<sweep>/<time>``): its jobs are
    the sub-folders ``<num>``; ``.jobs/<num>.json`` is what each job ended with, and
    ``sweep.json`` every job of the sweep (finished, failed, refused before launch)."""

    path: Path

    def job(self, num: int | str) -> Path:
        return self.path / str(num)

    def job_status(self, num: int | str) -> Path:
        return self.path / ".jobs" / f"{num}.json"

    @property
    def summary(self) -> Path:
        return self.path / "sweep.json"


@dataclass(frozen=True)
class RunFolder:
    """The files and folders of one training run."""

    path: Path

    @classmethod
    def of(cls, path: str | Path) -> RunFolder:
        """The run of a run folder or of ``<run>/checkpoints/<x>.ckpt``."""
        return cls(run_folder(path))

    @property
    def hydra(self) -> Path:
        return self.path / ".hydra"

    @property
    def config(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def preprocess(self) -> Path:
        return self.path / "preprocess.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def lock(self) -> Path:
        """``RUNNING``: the training process of this run (pid, host, SLURM job), while it runs."""
        return self.path / "RUNNING"

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints / f"{which}.ckpt"

    @property
    def failed(self) -> Path:
        return self.path / FAILED

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def csv_metrics(self) -> Path:
        return self.path / "csv" / "metrics.csv"

    @property
    def eval_root(self) -> Path:
        return self.path / "eval"

    def evaluations(self) -> list[EvalFolder]:
        """Every evaluation folder holding a ``metrics.json``, by name."""
        return [EvalFolder(p.parent) for p in sorted(self.eval_root.glob("*/metrics.json"))]

    def report(self) -> Path:
        return self.path / "report"

    def prediction(self, input_dir: str | Path) -> Path:
        """``predict/<input folder name>-<6 hex of its absolute path>``: two input folders of
        the same name (``siteA/images``, ``siteB/images``) never share one."""
        inp = Path(input_dir).resolve()
        digest = hashlib.sha256(str(inp).encode()).hexdigest()[:6]
        return self.path / "predict" / f"{inp.name}-{digest}"

    def export(self, fmt: str) -> Path:
        return self.path / "export" / str(fmt)


#: The files a prediction writes per image stem, and once per folder.
PREDICTION_FILES = ("{stem}_prob.png", "{stem}_mask.png", "{stem}_uncertainty.png")
PREDICTION_TABLE = "predictions.csv"


def prediction_files(folder: Path, stem: str) -> dict[str, Path]:
    """``prob`` / ``mask`` / ``uncertainty`` PNG paths of one image of a prediction."""
    return {kind: folder / name.format(stem=stem)
            for kind, name in zip(("prob", "mask", "uncertainty"), PREDICTION_FILES, strict=True)}


def log_name(stem: str, rank: int) -> str:
    """The log file of a global rank: ``<stem>.log`` on rank 0, ``<stem>_rank<r>.log`` else."""
    return f"{stem}.log" if rank == 0 else f"{stem}_rank{rank}.log"


# --- claiming folders -----------------------------------------------------------------


def claim_dir(path: str | Path, sep: str = "_") -> Path:
    """Create ``path`` atomically and return it; if it exists, create and return the first
    free ``<path><sep>1``, ``<path><sep>2``, ...

    Raises:
        ConfigError: the folder cannot be created (read-only or full file system, no
            permission), naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path.parent, exc) from None
    candidate, n = path, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}{sep}{n}")
        except OSError as exc:
            raise _unwritable(candidate, exc) from None


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    reason = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "the file system is read-only",
              errno.ENOSPC: "the disk is full"}.get(exc.errno or 0, exc.strerror or str(exc))
    return ConfigError(f"cannot create the output folder {path}: {reason}; choose a writable "
                       f"place with paths.output_root=<folder> (or {OUTPUT_ENV}) or "
                       f"output_dir=<folder>")


def exit_in_resolver(fn):
    """Run ``fn`` inside a Hydra resolver: a user error (:class:`SegflowError`) is printed as its one
    sentence and the process exits with status 2. (Raised as an exception it would reach
    Hydra wrapped in an interpolation error with a long traceback; ``SystemExit`` passes
    through OmegaConf and Hydra untouched.)"""

    def wrapper(*args):
        try:
            return fn(*args)
        except SegflowError as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


def _is_secondary_rank() -> bool:
    """A DDP rank other than 0 started by Lightning (it re-runs the command line)."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK"))


def shared_claims(kind: str, paths: list[Path]) -> list[Path]:
    """:func:`claim_dir` for each of ``paths`` on rank 0; the folders chosen are put into the
    environment, where the DDP ranks Lightning starts later (same command line) find them
    instead of claiming folders of their own; the ranks > 0 of a ``torchrun`` job get them
    from rank 0 (:mod:`segflow.runs.torchrun`)."""
    from segflow.runs import torchrun

    key = f"SEGFLOW_CLAIMED_{kind.upper()}"
    if _is_secondary_rank() and key in os.environ:
        return [Path(p) for p in json.loads(os.environ[key])]
    rank = torchrun.torchrun_rank()  # the processes of a torchrun job: rank 0's folders
    if rank:
        os.environ[key] = torchrun.receive(key)
        return [Path(p) for p in json.loads(os.environ[key])]
    claimed = [claim_dir(p) for p in paths]
    os.environ[key] = json.dumps([str(p) for p in claimed])
    if rank == 0:
        torchrun.publish(key, os.environ[key])
    return claimed


def is_inside(child: str | Path, parent: str | Path) -> bool:
    """True when ``child`` is ``parent`` or inside it (after resolving links)."""
    c, p = Path(child).resolve(), Path(parent).resolve()
    return c == p or p in c.parents


def check_writable(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it (before Hydra
    opens a log file there).

    Raises:
        ConfigError: read-only, full or not permitted, naming the folder.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _unwritable(path, OSError(errno.EACCES, "permission denied"))
    return path


def writable_error(path: str | Path, exc: OSError) -> ConfigError:
    """An OSError while writing ``path`` as one sentence (read-only, full, no permission)."""
    return _unwritable(Path(path), exc)


# --- the folders a command claims (the Hydra resolvers call these) ----------------------


def run_dir(root: str, experiment: str, when: str) -> str:
    """``hydra.run.dir`` of ``segflow.train``: a new ``<root>/runs/<experiment>/<when>``."""
    return str(shared_claims("run_dir", [Layout.at(root).run(experiment, when)])[0])


_SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(", "sort(", "shuffle(")


def swept_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The keys a multirun sweeps over (``model=unet,csnet``, ``seed=range(3)``, ...), in
    command-line order; a list value in brackets (``levels=[0.7,0.8]``) is not a sweep."""
    keys = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith("hydra.") or key in ("sweep_name", "experiment_name"):
            continue
        depth, split = 0, False
        for ch in value:
            depth += ch in "[({"
            depth -= ch in "])}"
            split |= ch == "," and depth == 0
        if split or value.strip().startswith(_SWEEP_FUNCTIONS):
            keys.append(key)
    return keys


def sweep_name(experiment: str, data: str, overrides: Any = None) -> str:
    """``sweep_name``'s default from the multirun's command-line ``overrides`` (Hydra's
    ``hydra.overrides.task``): the swept keys and the dataset (``-m model=unet,csnet``:
    ``model_synthetic_xca``; ``-m model=unet,csnet seed=0,1``: ``model-seed_synthetic_xca``;
    sweeping ``data`` itself: no dataset), else ``experiment`` (nothing swept, or a job's
    own config, which holds no sweep)."""
    keys = swept_keys([str(o) for o in overrides or []])
    if not keys:
        return experiment
    name = "-".join(keys)
    return name if "data" in keys else f"{name}_{data}"


def sweep_dir(root: str, sweep: str, when: str) -> str:
    """``hydra.sweep.dir`` of a multirun: a new ``<root>/multirun/<sweep>/<when>``."""
    return str(shared_claims("run_dir", [Layout.at(root).sweep(sweep, when)])[0])


def claimed_sweep() -> SweepFolder | None:
    """The multirun folder this process claimed (:func:`sweep_dir`), if any."""
    claimed = json.loads(os.environ.get("SEGFLOW_CLAIMED_RUN_DIR", "[]") or "[]")
    return SweepFolder(Path(claimed[0])) if claimed and Path(claimed[0]).is_dir() else None


def tool_dir(root: str, kind: str, when: str) -> str:
    """The folder of a benchmark tool run: a new ``<root>/<kind>/<when>``."""
    return str(shared_claims("run_dir", [Layout.at(root).tool(kind, when)])[0])


def _existing_run(run_dir: str | Path, command: str) -> Path:
    if not str(run_dir).strip():
        raise ConfigError(f"run_dir is empty; pass a run folder (outputs/runs/<experiment>/<time>) "
                          f"or a .ckpt file: python -m segflow.{command} run_dir=<run folder>")
    if not Path(run_dir).exists():
        raise ConfigError(f"run_dir={run_dir} does not exist; pass a run folder "
                          f"(outputs/runs/<experiment>/<time>) or a .ckpt file")
    return run_folder(run_dir)


def eval_root(output_dir: str | None, run_dir: str | Path) -> Path:
    """Where evaluations go: ``output_dir`` when set, else ``<run folder>/eval``.

    Raises:
        ConfigError: ``run_dir`` is empty or does not exist (nothing is created under a
            missing path).
    """
    run = _existing_run(run_dir, "eval")
    return Path(output_dir) if output_dir else RunFolder(run).eval_root


def eval_logs_dir(output_dir: str | None, run_dir: str, when: str) -> str:
    """``hydra.run.dir`` of ``segflow.eval``: a new ``<eval root>/logs/<when>``."""
    return str(shared_claims("run_dir", [eval_root(output_dir, run_dir) / "logs" / when])[0])


def prediction_dir(output_dir: str | None, run_dir: str, input_dir: str,
                   overwrite: bool = False) -> Path:
    """The folder of a prediction: ``output_dir`` when set (refused, before anything is
    written, when it already holds a file this prediction would write, unless
    ``overwrite``), else a new ``<run>/predict/<input>-<hash>`` (``_1``, ``_2`` when taken).

    Raises:
        ConfigError / DataError: ``run_dir`` or ``input_dir`` is missing or holds no image,
            or ``output_dir`` is (inside) ``input_dir`` — predictions never go among the
            user's images.
    """
    from segflow.data.io import IMAGE_EXTS, list_images  # reads images: imported when used

    run = _existing_run(run_dir, "predict")
    if not Path(input_dir).is_dir():
        raise DataError(f"input_dir={input_dir} is not a folder; point it at a folder of images")
    if output_dir and is_inside(output_dir, input_dir):
        raise ConfigError(f"output_dir={output_dir} is inside input_dir={input_dir}: predictions "
                          f"would mix with (and could replace) the images; choose another "
                          f"output_dir or leave it unset (a new folder under the run)")
    images = list_images(Path(input_dir))
    if not images:
        raise DataError(f"no images in {input_dir} (looked for {', '.join(IMAGE_EXTS)})")
    if not output_dir:
        return shared_claims("predict", [RunFolder(run).prediction(input_dir)])[0]
    folder = Path(output_dir)
    check_overwrites(folder, list(images), bool(overwrite))
    check_writable(folder)
    return folder


def check_overwrites(out: Path, stems: list[str], overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) when a file this prediction would write already exists."""
    if overwrite or not out.is_dir():
        return
    names = [PREDICTION_TABLE] + [p.name for s in stems for p in prediction_files(out, s).values()]
    taken = [n for n in names if (out / n).exists()]
    if taken:
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        raise ConfigError(f"output_dir={out} already holds {', '.join(taken[:3])}{more}; choose "
                          f"a new output_dir, leave it unset (a new folder under the run) or "
                          f"pass overwrite=true to replace them")


def export_dir(output_dir: str | None, run_dir: str, fmt: str, files: Iterable[str] = (),
               overwrite: bool = False) -> Path:
    """``output_dir``, else a new ``<run folder>/export/<format>`` (``_1``, ``_2`` when taken).
    The caller checks the format and the checkpoint first (nothing is made for a refusal).

    Raises:
        ConfigError: ``output_dir`` already holds one of ``files`` (what the export writes)
            and not ``overwrite``, or cannot be written (naming the folder).
    """
    run = _existing_run(run_dir, "export")
    if not output_dir:
        return claim_dir(RunFolder(run).export(fmt))
    folder = Path(output_dir)
    taken = [n for n in files if (folder / n).exists()] if folder.is_dir() else []
    if taken and not overwrite:
        raise ConfigError(f"output_dir={folder} already holds {', '.join(taken)}; choose a new "
                          f"output_dir, leave it unset (a new folder under the run) or pass "
                          f"overwrite=true to replace them (other files there are left alone)")
    return check_writable(folder)


def report_dir(paths: list[str | Path], root: str | Path | None = None) -> Path:
    """A new report folder: ``<path>/report`` for one path, else ``<root>/reports/<time>``
    (an earlier report is never replaced)."""
    if len(paths) == 1:
        return claim_dir(Path(paths[0]) / "report")
    return claim_dir(Layout.at(root).report())


# --- finding runs ---------------------------------------------------------------------


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of ``<run>/checkpoints/<x>.ckpt``."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


class NoRuns(DataError, FileNotFoundError):
    """No finished run where the user pointed."""


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (``.hydra/config.yaml`` + ``metrics.json``) at or under ``paths``, sorted;
    runs marked ``FAILED`` are skipped with a warning.

    Raises:
        NoRuns: a path that does not exist, or no run anywhere.
    """
    paths = list(paths)
    runs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise NoRuns(f"{path} does not exist; pass run folders or a multirun folder")
        candidates = ([path] if RunFolder(path).hydra.is_dir()
                      else [c.parent.parent for c in path.rglob(".hydra/config.yaml")])
        for c in candidates:
            if is_failed(c):  # by rule: a run marked FAILED is not compared
                print_skipped(c)
            elif RunFolder(c).metrics.is_file():
                runs.add(c.resolve())
    if not runs:
        raise NoRuns(f"no runs (folders with .hydra/config.yaml and metrics.json) under "
                     f"{', '.join(map(str, paths))}; train first or check the path")
    return sorted(runs)


def finished_runs(folder: Path) -> list[Path]:
    """Finished runs under ``folder`` (none when it does not exist yet)."""
    try:
        return find_runs([folder])
    except NoRuns:
        return []


__all__ = ["EvalFolder", "Layout", "NoRuns", "RunFolder", "check_overwrites", "check_writable",
           "claim_dir", "default_root", "eval_root", "export_dir", "find_runs", "finished_runs",
           "is_inside", "log_name", "prediction_dir", "prediction_files", "report_dir",
           "run_dir", "run_folder", "shared_claims", "stamp", "sweep_dir", "sweep_name", "swept_keys", "tool_dir",
           "writable_error"]
