"""``python -m segflow.eval``: metrics of a trained run, under one or many sampling settings.

Examples:
    python -m segflow.eval run_dir=outputs/runs/unet_synthetic_xca/<time>          # test split
    python -m segflow.eval run_dir=<run> split=val which=last trainer=cpu
    python -m segflow.eval run_dir=<run> data=synthetic_octa                         # another dataset
    python -m segflow.eval run_dir=<run> model.method.steps=10 model.method.n_samples=5
    python -m segflow.eval run_dir=<run> grid.steps=[1,2,4,10,50] grid.n_samples=[1,5] \\
        grid.solver=[euler,heun]                                                    # quality × cost

The model is rebuilt from the resolved config stored in the checkpoint
(:func:`segflow.config.load_module`); ``model.*`` keys are merged into that config,
``data=<option>`` replaces the run's data config (``data.*`` alone edits the stored one).
Evaluation runs through a Lightning ``Trainer`` (``trainer=...`` as in training, so DDP
works); every metric is a sum-state torchmetrics ``Metric``, exact across ranks.

Each setting writes ``<run>/eval/<tag>/`` with ``metrics.json``, ``per_image.csv`` and
``images/`` (probability, binary, uncertainty PNGs); a grid also writes
``<run>/eval/grid_<tag>/`` with ``grid.csv``, ``grid.md`` and ``dice_vs_nfe.png``.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from segflow.callbacks.prediction_writer import TestPredictionWriter
from segflow.config import checkpoint_path, load_checkpoint, load_module
from segflow.errors import ConfigError, exit_on_user_error
from segflow.outputs import (
    TABLE_METRICS,
    columns_of,
    line_groups,
    markdown_table,
    plot_lines,
    write_csv,
    write_json,
)
from segflow.progress import sampling_progress

log = logging.getLogger("segflow.eval")

#: Config groups whose dotted keys are added to (not only overridden in) the config.
OPEN_KEYS = ("model.", "data.", "grid.")


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of ``<run>/checkpoints/<x>.ckpt``."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def eval_root(output_dir: str | None, run_dir: str | Path) -> Path:
    """Where evaluations go: ``output_dir`` when set, else ``<run folder>/eval``."""
    return Path(output_dir) if output_dir else run_folder(run_dir) / "eval"


# For hydra.run.dir in eval.yaml (the log folder lives beside the results).
OmegaConf.register_new_resolver("segflow_eval_root", lambda out, run: str(eval_root(out, run)),
                                replace=True)


def open_key_overrides(argv: list[str]) -> list[str]:
    """Prefix ``model.*``, ``data.*`` and ``grid.*`` overrides with ``++``: these groups are
    empty in eval.yaml (the values come from the checkpoint), so Hydra would refuse keys
    it has not seen. Idempotent (DDP child processes re-run the same command line)."""
    return [f"++{a}" if a.startswith(OPEN_KEYS) and "=" in a else a for a in argv]


def best_val_score(ckpt: dict[str, Any]) -> float | None:
    """The monitored validation score saved by ``ModelCheckpoint`` in a checkpoint."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None


def grid_combinations(grid: DictConfig | dict, sampling_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """``{steps: [1, 2], solver: [euler, heun]}`` → every combination as a dict.

    Raises:
        ConfigError: a key that is not one of the method's sampling settings.
    """
    grid = OmegaConf.to_container(grid, resolve=True) if isinstance(grid, DictConfig) else dict(grid)
    unknown = sorted(set(grid) - set(sampling_keys))
    if unknown:
        raise ConfigError(
            f"grid.{unknown[0]} is not a sampling setting of this model; its settings are "
            f"{list(sampling_keys) or 'none (one-pass method: nothing to sweep)'}")
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple, ListConfig)) else [v] for v in grid.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def settings_tag(split: str, settings: dict[str, Any], data_name: str | None = None,
                 which: str = "best", weights: str = "ema") -> str:
    """Folder name of one evaluation, e.g. ``test_n_samples-5_solver-heun_steps-4``."""
    parts = ([data_name] if data_name else []) + [split]
    if which != "best":
        parts.append(Path(which).stem)
    if weights != "ema":
        parts.append(weights)
    parts += [f"{k}-{v}" for k, v in sorted(settings.items())]
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


def _rebase_split_dirs(data_cfg: DictConfig, stored: DictConfig, given: Any) -> None:
    """``data.root=<new>`` moves the split folders with it.

    The stored config is resolved, so its ``train_dir`` / ``val_dir`` / ``test_dir`` are
    literal paths under the old root (``data/drive/train``); without this, editing only
    ``data.root`` (the data moved, or the run came from another machine) would still read
    the old folders. A split folder the user set explicitly is left as given.
    """
    old_root, new_root = stored.get("root"), data_cfg.get("root")
    if not old_root or not new_root or str(old_root) == str(new_root):
        return
    for key in ("train_dir", "val_dir", "test_dir"):
        value = stored.get(key)
        if value is None or key in given:
            continue
        rel = os.path.relpath(str(value), str(old_root))
        if not rel.startswith(".."):
            data_cfg[key] = os.path.join(str(new_root), rel)


def build_datamodule(cfg: DictConfig, stored: DictConfig, split: str) -> tuple[Any, str | None]:
    """The datamodule to evaluate on, its test split pointing at ``split``.

    Returns:
        (datamodule, name of the other dataset or None when it is the run's own).
    """
    given = cfg.get("data")
    if given is not None and "_target_" in given:  # data=<option>: a whole composed group
        data_cfg, other = given, str(given.get("name", "data"))
    else:  # the run's own data config, with any data.* edits merged in
        data_cfg = OmegaConf.merge(stored.data, given or {})
        _rebase_split_dirs(data_cfg, stored.data, given or {})
        other = None
    datamodule = instantiate(data_cfg)
    if split not in datamodule.split_dirs:
        raise ConfigError(f"split={split} is not one of {sorted(datamodule.split_dirs)}")
    # The Trainer evaluates the test split: point it at the chosen folder. A missing val
    # folder makes the datamodule hold out part of train, exactly as during training.
    datamodule.split_dirs["test"] = datamodule.split_dirs[split]
    if other == stored.data.get("name"):
        other = None
    return datamodule, other


def load_for_eval(cfg: DictConfig) -> tuple[Any, DictConfig, dict[str, Any]]:
    """Rebuild the module (``model.*`` overrides merged), choose EMA or raw weights.

    Returns:
        (module, stored run config, checkpoint metadata for metrics.json).
    """
    if cfg.weights not in ("ema", "raw"):
        raise ConfigError(f"weights must be 'ema' or 'raw', got {cfg.weights!r}")
    model_cfg = cfg.get("model")
    overrides = OmegaConf.to_container(model_cfg, resolve=True) if model_cfg is not None else {}
    module, stored = load_module(cfg.run_dir, cfg.which, overrides)
    ckpt_file = checkpoint_path(cfg.run_dir, cfg.which)
    ckpt = load_checkpoint(ckpt_file)
    if cfg.weights == "raw":
        if "current_model_state" in ckpt:  # EMA runs keep the raw weights beside the average
            module.load_state_dict(ckpt["current_model_state"])
        else:
            log.info("%s kept no EMA: its weights are the raw weights", ckpt_file)
    meta = {"checkpoint": str(ckpt_file), "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"), "best_val_score": best_val_score(ckpt)}
    return module, stored, meta


def _print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    # Hydra's console handler prints it; the file handler keeps it in eval.log.
    log.info("%s", f"\n{title}\n\n{markdown_table(rows, columns)}")


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate a run under every grid combination; returns one summary row per setting."""
    from segflow.train import _route_lightning_logs_to_file

    _route_lightning_logs_to_file()
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {cfg.split!r}")
    module, stored, meta = load_for_eval(cfg)
    datamodule, other_data = build_datamodule(cfg, stored, cfg.split)
    in_ch = getattr(module.net, "in_channels", None)
    if in_ch is not None and in_ch != datamodule.channels:
        raise ConfigError(f"the model takes {in_ch}-channel images but data.channels="
                          f"{datamodule.channels}; set data.channels={in_ch}")
    base = module.method
    combos = grid_combinations(cfg.get("grid") or {}, tuple(base.sampling_keys))
    root = eval_root(cfg.get("output_dir"), cfg.run_dir)
    writer = TestPredictionWriter(max_images=cfg.max_images)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(root),
                                      callbacks=[writer] if cfg.save_images else [])
    summaries: list[dict[str, Any]] = []
    data_name = other_data or str(stored.data.get("name"))
    for combo in combos:
        try:
            module.method = base.with_settings(**combo)
        except ValueError as exc:
            raise ConfigError(f"grid setting {combo}: {exc}") from None
        settings = module.method.sampling_settings()
        tag = settings_tag(cfg.split, settings, other_data, cfg.which, cfg.weights)
        out = root / tag
        writer.folder = out / "images"
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same noise for every setting
        with sampling_progress():  # a bar for long sampling loops (e.g. 1000-step DDPM)
            trainer.test(module, datamodule=datamodule, verbose=False)
        results, rows = module.test_results, module.test_rows
        summary = {**results, **settings}  # the settings, not the mean n_samples
        summaries.append(summary)
        if trainer.global_rank != 0:
            continue
        write_json(out / "metrics.json", {
            "run_dir": str(run_folder(cfg.run_dir)), "model": stored.model.get("name"),
            "data": data_name, "split": cfg.split, "which": cfg.which, "weights": cfg.weights,
            "seed": cfg.seed, "settings": settings, "n_images": len(rows), **meta,
            # where the images and labels are (for notebooks showing predictions beside truth)
            "split_dir": str(datamodule.split_dirs[cfg.split]), "image_dir": datamodule.image_dir,
            "label_dir": datamodule.label_dir,
            "metrics": results})
        write_csv(out / "per_image.csv", rows, columns_of(rows, ["name", *TABLE_METRICS]))
        _print_table(f"{stored.model.get('name')} on {data_name}/{cfg.split} {settings or ''} "
                     f"-> {out}", [{"images": len(rows), **results}],
                     ["images", *[k for k in TABLE_METRICS if k in results]])
    if len(combos) > 1 and trainer.global_rank == 0:
        write_grid(root / f"grid_{settings_tag(cfg.split, {}, other_data, cfg.which, cfg.weights)}",
                   summaries, list(base.sampling_keys))
    return summaries


def write_grid(folder: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """``grid.csv``, ``grid.md`` and ``dice_vs_nfe.png`` of a quality × cost grid.

    The plot has one line per combination of the grid keys other than the one with the
    most values (usually the number of steps; see :func:`segflow.outputs.line_groups`)."""
    columns = [*keys, *[k for k in TABLE_METRICS if any(k in r for r in rows)]]
    write_csv(folder / "grid.csv", rows, columns_of(rows, columns))
    (folder / "grid.md").write_text(markdown_table(rows, columns))
    plot_lines(folder / "dice_vs_nfe.png", rows, "nfe_per_image",
               ["dice", "cldice", "seconds_per_image"], group_by=line_groups(rows, keys), log_x=True,
               title="quality vs sampling cost (NFE per image = NFE per member x ensemble size)")
    _print_table(f"quality x cost grid -> {folder}", rows, columns)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        evaluate(cfg)


def main() -> None:
    """Entry point: rewrite the open-group overrides, then run Hydra."""
    sys.argv[1:] = open_key_overrides(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
