"""Run folders: where outputs go, folders unique by construction, names that become paths,
and finding the runs under a folder.

A run folder is *claimed* with an atomic ``mkdir`` (``exist_ok=False``): when the name is
taken — two runs started in the same second by a script or a job array, an earlier
evaluation of the same setting, a second prediction of the same input folder — the next
free suffix ``_1``, ``_2``, ... is taken instead. Two processes can never share a folder.

The Hydra resolvers of :mod:`segflow.conf.resolvers` put this into the configs'
``hydra.run.dir`` / ``hydra.sweep.dir``:

* ``${segflow_unique:<path>}`` claims ``<path>`` (or the next free suffix) and returns it;
  cached per config, so a multirun sweep resolves its folder once for all its jobs.
* ``${segflow_name:<key>,<value>}`` returns ``value`` after checking that it can be one
  folder name (not empty, no ``/`` or ``\\``, not ``.`` or ``..``).

Standard library only (no torch, no Hydra).
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

from segflow.errors import ConfigError, SegflowError
from segflow.runs.failed import is_failed, print_skipped

#: Characters that cannot appear in a name that becomes one folder.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f]")


def check_name(key: str, value: object) -> str:
    """``value`` if it can be a single folder name, else a ConfigError naming ``key``."""
    name = "" if value is None else str(value)
    if not name.strip():
        raise ConfigError(f"{key}={value!r} is empty; give it a name (letters, digits, '-', '_', "
                          f"'.'), it becomes a folder name")
    if name in (".", "..") or _BAD_NAME.search(name) or name != name.strip():
        raise ConfigError(f"{key}={name!r} cannot be a folder name: it must not contain '/' or "
                          f"'\\', be '.' or '..', or start or end with a space; use e.g. "
                          f"{key}={_suggest(name)}")
    return name


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "my_run"
    return cleaned


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
                       f"place with paths.output_root=<folder> (or SEGFLOW_OUTPUT_DIR) or "
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


def output_root() -> Path:
    """Where runs, sweeps, reports and comparisons go: ``$SEGFLOW_OUTPUT_DIR`` or ``outputs``
    (the configs' ``paths.output_root`` reads the same variable)."""
    return Path(os.environ.get("SEGFLOW_OUTPUT_DIR", "outputs"))


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of ``<run>/checkpoints/<x>.ckpt``."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def eval_root(output_dir: str | None, run_dir: str | Path) -> Path:
    """Where evaluations go: ``output_dir`` when set, else ``<run folder>/eval``.

    Raises:
        ConfigError: ``run_dir`` is empty or does not exist (nothing is created under a
            missing path).
    """
    if not str(run_dir).strip():
        raise ConfigError("run_dir is empty; pass a run folder (outputs/runs/<experiment>/<time>) "
                          "or a .ckpt file: python -m segflow.eval run_dir=<run folder>")
    if not Path(run_dir).exists():
        raise ConfigError(f"run_dir={run_dir} does not exist; pass a run folder "
                          f"(outputs/runs/<experiment>/<time>) or a .ckpt file")
    return Path(output_dir) if output_dir else run_folder(run_dir) / "eval"


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (``.hydra/config.yaml`` + ``metrics.json``) at or under ``paths``, sorted.

    Raises:
        FileNotFoundError: a path that does not exist, or no run anywhere.
    """
    runs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run folders or a multirun folder")
        candidates = [path] if (path / ".hydra").is_dir() else [c.parent.parent for c in path.rglob(".hydra/config.yaml")]
        for c in candidates:
            if is_failed(c):  # by rule: a run marked FAILED is not compared
                print_skipped(c)
            elif (c / "metrics.json").is_file():
                runs.add(c.resolve())
    if not runs:
        raise FileNotFoundError(f"no runs (folders with .hydra/config.yaml and metrics.json) under "
                                f"{', '.join(map(str, paths))}; train first or check the path")
    return sorted(runs)


__all__ = ["check_name", "check_writable", "claim_dir", "eval_root", "find_runs", "is_inside", "output_root",
           "run_folder", "shared_claims", "writable_error"]
