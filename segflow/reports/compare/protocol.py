"""The comparison's stages: train (models × seeds), select settings on val, test once."""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.infra.children import run_child
from segflow.infra.errors import ConfigError, DataError
from segflow.runs.failed import is_failed
from segflow.runs.layout import Layout, RunFolder
from segflow.runs.records import EvalRecord, read_run_config, run_model_name

DEFAULT_MODELS = "unet,csnet,medsegdiff_small,flow_small"
#: The sampling settings a comparison sweeps (absent = the method does not have it).
GRID_KEYS = ("steps", "n_samples", "tta")
SettingKey = tuple  # (steps, n_samples, tta)


def sweep_folder(name: str, layout: Layout | None = None) -> Path:
    """The folder of the comparison's training sweep, under ``layout``'s output root."""
    return (layout or Layout.at()).sweeps(name)


def run_config(run: Path) -> dict[str, Any]:
    """A run's config as plain containers, interpolations unresolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(read_run_config(run, strict=True), resolve=False)


def run_data(run: Path) -> dict[str, Any]:
    """The run's data config with its interpolations resolved (split folders as paths)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(run_config(run))
    return OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else {}


def run_model(run: Path) -> str:
    return run_model_name(run) or run.name


def run_seed(run: Path) -> int:
    return int(run_config(run).get("seed", 0))


def is_generative(cfg: dict[str, Any]) -> bool:
    """Whether the run's method samples (its class's ``generative``)."""
    from hydra.utils import get_class

    return bool(getattr(get_class(cfg["model"]["method"]["_target_"]), "generative", False))


def newest_per_model_seed(runs: list[Path]) -> dict[tuple[str, int], Path]:
    """The newest finished run of each (model, seed) (folder names sort by start time), so
    families or seeds trained one invocation at a time merge into one comparison."""
    latest: dict[tuple[str, int], tuple[str, Path]] = {}
    for run in runs:
        key = (run_model(run), run_seed(run))
        stamp = str(run.relative_to(run.parents[1]))  # "<time>/<job>"
        if key not in latest or stamp > latest[key][0]:
            latest[key] = (stamp, run)
    return {k: run for k, (_, run) in sorted(latest.items())}


def setting_key(settings: dict[str, Any]) -> SettingKey:
    """(steps, n_samples, tta) of an evaluation's settings; tta defaults to one pass."""
    return (settings.get("steps"), settings.get("n_samples"), int(settings.get("tta", 1) or 1))


def off_grid(settings: dict[str, Any], method: dict[str, Any]) -> list[str]:
    """The sampling settings of an evaluation, other than the grid's (steps, members, TTA),
    that differ from the run's trained configuration (e.g. ``temperature=0.5`` or
    ``solver=heun`` of a side study): such an evaluation is not a cell of the comparison.
    Keys the configuration does not name are not compared (the class default), except those
    of :data:`~segflow.methods.base.UNNAMED_DEFAULTS` (a temperature absent means 1)."""
    from segflow.methods.base import UNNAMED_DEFAULTS

    return [f"{key}={value}" for key, value in settings.items()
            if key not in GRID_KEYS and (key in method or key in UNNAMED_DEFAULTS)
            and value != method.get(key, UNNAMED_DEFAULTS.get(key))]


def describe(key: SettingKey) -> str:
    """A setting for the table: ``2 steps × 4``, ``TTA 4``, ``1 pass``."""
    steps, n_samples, tta = key
    parts = []
    if steps is not None:
        parts.append(f"{steps} step{'s' if steps != 1 else ''} × {n_samples or 1}")
    if tta > 1:
        parts.append(f"TTA {tta}")
    return ", ".join(parts) or "1 pass"


def _resolved(path: Any) -> str:
    return str(Path(str(path)).resolve())


@dataclass
class Evaluation:
    """One ``segflow.eval`` result of one run."""

    run: Path
    model: str
    seed: int
    split: str
    test_set: str
    key: SettingKey
    metrics: dict[str, Any]
    folder: Path
    split_used: str | None = None  # "val": a test split that fell back to validation

    @property
    def nfe(self) -> float:
        return float(self.metrics.get("nfe_per_image", 1.0))

    def cost(self, unit: str) -> float:
        """This evaluation's cost per image in ``unit``: ``NFE`` or ``GFLOPs`` (counted;
        infinite when the evaluation did not count them)."""
        if unit == "NFE":
            return self.nfe
        return float(self.metrics.get("gflops_per_image", float("inf")))


def read_evaluations(run: Path, test_sets: dict[str, str]) -> list[Evaluation]:
    """Every evaluation of ``run`` on its own val split or on one of ``test_sets``
    ({resolved test folder: label}); others (another split, another dataset, a setting off
    the grid: :func:`off_grid`) are skipped."""
    own_val = _resolved(run_data(run).get("val_dir", ""))
    method = (run_config(run).get("model") or {}).get("method") or {}
    out = []
    for folder in RunFolder(run).evaluations():
        ev = EvalRecord.read(folder.path, strict=False)
        if ev is None or is_failed(folder.path):
            continue
        split_dir = _resolved(ev.split_dir or "")
        if ev.which != "best" or ev.weights != "ema" or off_grid(ev.settings, method):
            continue
        if ev.split == "val" and split_dir == own_val:
            label = "val"
        elif ev.split == "test" and split_dir in test_sets:
            label = test_sets[split_dir]
        else:
            continue
        out.append(Evaluation(run, run_model(run), run_seed(run), ev.split, label,
                              setting_key(ev.settings), ev.metrics, folder.path, ev.split_used))
    return out


@dataclass
class Budgeted:
    """The setting val chose for one model within one NFE budget."""

    model: str
    budget: float
    key: SettingKey
    nfe: float
    val_dice: float
    seeds: list[int] = field(default_factory=list)
    unit: str = "NFE"  # or "GFLOPs": counted FLOPs per image


#: The selection rules ``segflow.compare --select`` offers, as a table's header names them.
SELECTION_RULES = {
    "dice": "the setting with the best mean val Dice over seeds",
    "topology": "the setting with the lowest mean val β0 error among those whose mean val Dice "
                "is within the Dice margin of the best",
}


def choose_settings(val: list[Evaluation], budgets: list[float], unit: str = "NFE",
                    select: str = "dice", dice_margin: float = 0.01) -> list[Budgeted]:
    """For every model and budget, the val setting chosen by ``select`` (declared before
    anything is tested: :data:`SELECTION_RULES`) among those within the budget (``unit``:
    NFE per image as measured, or counted GFLOPs per image); ties go to the cheaper one.
    Only settings evaluated for every seed of the model compete."""
    if select not in SELECTION_RULES:
        raise ConfigError(f"--select {select}: choose one of {', '.join(SELECTION_RULES)}")
    by_model: dict[str, dict[SettingKey, list[Evaluation]]] = defaultdict(lambda: defaultdict(list))
    for ev in val:
        if ev.split == "val":  # never a test result, whatever the caller passes
            by_model[ev.model][ev.key].append(ev)
    chosen = []
    for model, settings in sorted(by_model.items()):
        seeds = sorted({ev.seed for evs in settings.values() for ev in evs})
        complete = {k: evs for k, evs in settings.items() if sorted(e.seed for e in evs) == seeds}
        for budget in budgets:
            fits = [(sum(float(e.metrics["dice"]) for e in evs) / len(evs),
                     -max(e.cost(unit) for e in evs), -max(e.nfe for e in evs), k)
                    for k, evs in complete.items() if max(e.cost(unit) for e in evs) <= budget + 1e-9]
            if not fits:
                continue
            if select == "topology":  # within the margin of the best Dice: fewest fragments
                best = max(f[0] for f in fits)
                near = [f for f in fits if f[0] >= best - dice_margin]
                beta0 = {f[3]: sum(float(e.metrics.get("betti0_error", float("inf")))
                                   for e in complete[f[3]]) / len(complete[f[3]]) for f in near}
                dice, _, neg_nfe, key = min(near, key=lambda f: (beta0[f[3]], -f[1], -f[0]))
            else:
                dice, _, neg_nfe, key = max(fits, key=lambda f: (f[0], f[1]))
            chosen.append(Budgeted(model, budget, key, -neg_nfe, dice, seeds, unit))
    return chosen


# -- running the stages -------------------------------------------------------------------
def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    code = run_child(cmd)  # a SIGTERM / Ctrl+C of segflow.compare ends it too
    if code != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (exit {code}); "
                         "see its message above")


def check_test_split(data: str, overrides: list[str]) -> None:
    """Refuse a data option without a test split before anything trains: its runs would be
    tested on the validation split, and the table would call validation numbers test numbers.

    Raises:
        DataError: the composed ``data`` has no test folder (one sentence naming it).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    keep = [o for o in overrides if o.lstrip("+~").startswith(("data.", "paths."))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("segflow.conf", version_base="1.3"):
            cfg = compose("train", overrides=[f"data={data}", *keep])
    except Exception as exc:  # noqa: BLE001 - Hydra's first line names the option
        raise ConfigError(f"--data {data}: {str(exc).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    if cfg.data.get("synthetic"):
        return  # generated with its own test split
    test = Path(str(cfg.data.get("test_dir") or Path(str(cfg.data.root)) / "test"))
    if not test.is_dir():
        raise DataError(f"--data {data}: {test} does not exist; a comparison reports a test "
                        f"split: prepare one (python -m segflow.prepare ...) or point "
                        f"data.root / data.test_dir at a folder with a test/ split")


def refuse_validation_as_test(evals: list[Evaluation]) -> None:
    """An evaluation of the test split that scored validation images (data without a test
    folder) is refused, naming the run."""
    for ev in evals:
        if ev.split == "test" and ev.split_used == "val":
            raise DataError(f"{ev.folder}: the test split of this run's data is its validation "
                            f"split (no test folder); prepare a test split and evaluate again")


def train(models: str, data: str, seeds: str, name: str, overrides: list[str]) -> None:
    """Stage 1: the multirun over models × seeds."""
    _run([sys.executable, "-m", "segflow.train", "-m", f"model={models}", f"data={data}",
          f"seed={seeds}", f"sweep_name={name}", *overrides])


def eval_overrides(overrides: list[str]) -> list[str]:
    """The training overrides an evaluation repeats: the device (``trainer``, ``debug``)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("trainer", "debug")
            or o.lstrip("+~").startswith(("trainer.", "debug."))]


def val_grid(cfg: dict[str, Any], steps: list[int], samples: list[int], tta: list[int],
             max_budget: float) -> list[dict[str, int]]:
    """The val grid of a run: steps × members (generative) or TTA passes (one-pass), each
    setting at most ``max_budget`` network evaluations per image (steps × members)."""
    if is_generative(cfg):
        return [{"steps": s, "n_samples": n} for s in steps for n in samples if s * n <= max_budget]
    return [{"tta": t} for t in tta if t <= max_budget]


def has_evaluation(evals: list[Evaluation], label: str, settings: dict[str, int]) -> bool:
    """Whether ``evals`` hold ``settings`` (a val grid cell or a chosen setting) on ``label``."""
    return any(ev.test_set == label and ev.key == setting_key(settings) for ev in evals)


def as_grids(cells: list[dict[str, int]]) -> list[dict[str, list[int]]]:
    """Cells of one family → few products (one ``segflow.eval`` each): the cells sharing
    everything but their first key become one grid over that key."""
    groups: dict[tuple, dict[str, list[int]]] = {}
    for cell in cells:
        keys = list(cell)
        rest = tuple((k, cell[k]) for k in keys[1:])
        grid = groups.setdefault(rest, {keys[0]: [], **{k: [v] for k, v in rest}})
        grid[keys[0]].append(cell[keys[0]])
    return list(groups.values())


def evaluate(run: Path, split: str, grid: dict[str, list[int]], passed: list[str],
             data_args: list[str] = ()) -> None:
    """One ``segflow.eval`` of ``run`` over the product ``grid`` ({setting: values})."""
    _run([sys.executable, "-m", "segflow.eval", f"run_dir={run}", f"split={split}",
          *[f"grid.{k}=[{','.join(str(v) for v in values)}]" for k, values in grid.items()],
          *data_args, "save_images=false", *passed])


def also_test_sets(specs: list[str]) -> list[tuple[str, str, Path]]:
    """``name:root`` → (label, data option, root); the label is ``name@<folder name>``.

    Raises:
        ConfigError: a spec without ``:`` or a root without a ``test/`` folder.
    """
    out = []
    for spec in specs:
        option, sep, root = spec.partition(":")
        if not sep or not option or not root:
            raise ConfigError(f"--also-test {spec!r}: write <data option>:<prepared folder>, "
                              "e.g. --also-test dca1:data/other_angiograms")
        if not (Path(root) / "test").is_dir():
            raise ConfigError(f"--also-test {spec!r}: {Path(root) / 'test'} does not exist; "
                              f"prepare the dataset first (python -m segflow.prepare ...)")
        out.append((f"{option}@{Path(root).name}", option, Path(root)))
    return out


def test_sets_of(run: Path, also: list[tuple[str, str, Path]]) -> dict[str, str]:
    """{resolved test folder: label} of a run's own test split and the extra test sets."""
    data = run_data(run)
    own = {_resolved(data.get("test_dir", "")): str(data.get("name", "own"))}
    return {**own, **{_resolved(root / "test"): label for label, _, root in also}}
