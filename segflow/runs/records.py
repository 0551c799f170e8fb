"""The result files of runs and evaluations, each with one checked writer and one checked
reader: :class:`RunRecord` (``<run>/metrics.json``), :class:`EvalRecord`
(``<run>/eval/<tag>/metrics.json``) and a run's resolved config (``.hydra/config.yaml``).

A file of another shape (edited by hand, written by another tool, cut short) is never a
``TypeError`` half-way through a report: the reader returns None with one warning naming
the file and the key (``strict=False``), or raises one :class:`RecordError` sentence.
Runs marked ``FAILED`` are skipped by the finders (:func:`segflow.runs.layout.find_runs`).
Every record carries the git commit it was written at (:func:`commit`).

No torch, no Hydra (OmegaConf only, for the config).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.infra.atomic import write_json
from segflow.infra.errors import DataError
from segflow.runs.layout import EvalFolder, RunFolder


class RecordError(DataError):
    """A result file that cannot be read as a segflow record: names the file and the key."""


def commit(where: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the segflow source (``sha``, ``dirty``: uncommitted changes to
    tracked files), or ``{"sha": "unknown", "dirty": None}`` outside a checkout."""
    here = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return {"sha": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def _is_number_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, int | float | type(None)) and not isinstance(v, bool) for v in value.values())


def _check(data: Any, checks: dict[str, tuple[Any, str]]) -> str | None:
    """What is wrong with ``data``'s shape, or None (absent keys are allowed)."""
    if not isinstance(data, dict):
        return "not a segflow result (a JSON object)"
    for key, (ok, what) in checks.items():
        value = data.get(key)
        if value is not None and not ok(value):
            return f'"{key}" is {type(value).__name__} {str(value)[:60]}, not {what}'
    return None


def _name(value: Any) -> bool:
    return isinstance(value, str)


_NUMBERS = (_is_number_map, "an object of metric names to numbers")
_OBJECT = (lambda v: isinstance(v, dict), "an object")


def _read(path: Path, checks: dict[str, tuple[Any, str]], what: str, strict: bool) -> dict | None:
    try:
        data = json.loads(path.read_text())
        problem = _check(data, checks)
    except (OSError, ValueError) as exc:
        problem = f"not readable JSON ({exc})"
    if problem is None:
        return data
    message = f"{path}: {problem}; re-run that {what} or delete the file"
    if strict:
        raise RecordError(message)
    print(f"warning: skipped {message}", file=sys.stderr, flush=True)
    return None


def _split(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The known fields of ``cls`` from ``data``; the rest goes to ``extra``."""
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {**{k: v for k, v in data.items() if k in known},
            "extra": {k: v for k, v in data.items() if k not in known}}


class _Record:
    """What the two records share: a plain dict of the known fields and the extras, a
    writer that fills in the commit, and a reader's constructor."""

    commit: dict[str, Any]
    extra: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **d["extra"]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**_split(cls, data))

    def _write(self, path: Path) -> Path:
        self.commit = self.commit or commit()
        write_json(path, self.as_dict())
        return path


@dataclass
class RunRecord(_Record):
    """``<run>/metrics.json``: what a training run records of its fit and its test."""

    experiment: str | None = None
    model: str | None = None
    data: str | None = None
    run_dir: str | None = None
    fingerprint: str | None = None
    resumed_from: str | None = None
    epochs: int | None = None
    global_step: int | None = None
    fit_seconds: float | None = None
    effective_batch_size: int | None = None
    best_checkpoint: str | None = None
    best_val_dice: float | None = None
    test_checkpoint: str | None = None
    test_split: str | None = None
    test: dict[str, float] | None = None
    test_timing: dict[str, Any] | None = None
    #: The git commit this was written at (filled in by :meth:`write` when empty).
    commit: dict[str, Any] = field(default_factory=dict)
    #: Further entries (time to Dice, loader wait, ...): kept as written.
    extra: dict[str, Any] = field(default_factory=dict)

    CHECKS = {"test": _NUMBERS, "model": (_name, "a name"), "data": (_name, "a name"),
              "commit": _OBJECT}

    def write(self, run: str | Path) -> Path:
        return self._write(RunFolder(Path(run)).metrics)

    @classmethod
    def read(cls, run: str | Path, strict: bool = True) -> RunRecord | None:
        """The record of ``run`` (a run folder); None (with a warning) for a damaged file
        when not ``strict``."""
        data = _read(RunFolder(Path(run)).metrics, cls.CHECKS, "run", strict)
        return None if data is None else cls.from_dict(data)


@dataclass
class EvalRecord(_Record):
    """``<run>/eval/<tag>/metrics.json``: one evaluation under one sampling setting."""

    run_dir: str | None = None
    model: str | None = None
    data: str | None = None
    split: str | None = None
    #: The split whose images were scored: "val" when a test split was asked of data
    #: without a test folder (None: written before this was recorded).
    split_used: str | None = None
    which: str = "best"
    weights: str = "ema"
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    n_images: int | None = None
    crop: int | None = None
    split_dir: str | None = None
    image_dir: str | None = None
    label_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timing: dict[str, Any] | None = None
    #: The git commit this was written at (filled in by :meth:`write` when empty).
    commit: dict[str, Any] = field(default_factory=dict)
    #: The checkpoint's metadata (checkpoint, epoch, global_step, best_val_score) and more.
    extra: dict[str, Any] = field(default_factory=dict)

    CHECKS = {"metrics": _NUMBERS, "settings": _OBJECT, "model": (_name, "a name"),
              "commit": _OBJECT}

    def write(self, folder: str | Path) -> Path:
        return self._write(EvalFolder(Path(folder)).metrics)

    @classmethod
    def read(cls, folder: str | Path, strict: bool = True) -> EvalRecord | None:
        data = _read(EvalFolder(Path(folder)).metrics, cls.CHECKS, "evaluation", strict)
        if data is None:
            return None
        data = {**data, "settings": data.get("settings") or {}, "metrics": data.get("metrics") or {}}
        return cls.from_dict(data)

    @property
    def nfe(self) -> float:
        return float(self.metrics.get("nfe_per_image", 1.0))


#: Module paths of earlier segflow versions, as run configs and checkpoints name them in
#: ``_target_``: rewritten when such a config is read, so older runs still load.
MOVED_MODULES = {
    "segflow.lit_module.": "segflow.engine.module.",
    "segflow.optim.": "segflow.engine.optim.",
    "segflow.callbacks.": "segflow.engine.callbacks.",
    "segflow.distributed.": "segflow.engine.distributed.",
    "segflow.errors.": "segflow.infra.errors.",
}


def upgrade_targets(node: Any) -> Any:
    """``node`` (a plain container) with every ``_target_`` of a moved module renamed."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                for old, new in MOVED_MODULES.items():
                    if value.startswith(old):
                        value = new + value[len(old):]
            out[key] = upgrade_targets(value)
        return out
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node


def read_run_config(run: str | Path, strict: bool = False):
    """A run's config (``.hydra/config.yaml``) as an OmegaConf ``DictConfig``, unresolved,
    its moved ``_target_`` paths upgraded; None when absent or not readable (``strict``:
    a :class:`RecordError` instead)."""
    from omegaconf import DictConfig, OmegaConf

    path = RunFolder(Path(run)).config
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ValueError("not a mapping")
        return OmegaConf.create(upgrade_targets(OmegaConf.to_container(cfg, resolve=False)))
    except Exception as exc:  # noqa: BLE001 - a half-written or foreign file
        if strict:
            raise RecordError(f"{path}: not a readable run config ({exc}); is {run} a "
                              f"segflow run folder?") from None
        return None


def read_overrides(run: str | Path) -> dict[str, str]:
    """``key=value`` overrides of a run's command line (``.hydra/overrides.yaml``)."""
    import yaml

    path = RunFolder(Path(run)).overrides
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    out = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def run_model_name(run: str | Path) -> str | None:
    """The model preset of a run: its record's, else its config's."""
    record = RunRecord.read(run, strict=False)
    if record is not None and record.model:
        return record.model
    cfg = read_run_config(run)
    return None if cfg is None else cfg.get("model", {}).get("name")


__all__ = ["EvalRecord", "MOVED_MODULES", "RecordError", "RunRecord", "commit",
           "read_overrides", "read_run_config", "run_model_name", "upgrade_targets"]
