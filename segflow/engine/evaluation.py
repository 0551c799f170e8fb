"""Evaluating a trained run (``segflow.eval``): metrics under one or many sampling settings.

The model is rebuilt from the resolved config stored in the checkpoint
(:func:`segflow.runs.checkpoints.load_model`); ``model.*`` keys are merged into that config,
``data=<option>`` replaces the run's data config (``data.*`` alone edits the stored one).
Whole images are scored unless a crop is asked for (``data.eval_crop=<px>``, or the
``debug`` group's); ``metrics.json`` records the crop used (``crop``, null: whole images).
Evaluation runs through a Lightning ``Trainer`` (``trainer=...`` as in training, so DDP
works); every metric is a sum-state torchmetrics ``Metric``, exact across ranks.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from segflow.engine.callbacks.prediction_writer import TestPredictionWriter
from segflow.infra.atomic import write_text as atomic_write_text
from segflow.infra.debug import debug_data, debug_sampling
from segflow.infra.errors import ConfigError
from segflow.infra.progress import sampling_progress
from segflow.infra.validate import validate_eval
from segflow.runs.checkpoints import load_model
from segflow.runs.layout import EvalFolder, eval_root, run_folder, shared_claims
from segflow.runs.logs import route_lightning_logs_to_file
from segflow.runs.records import EvalRecord
from segflow.runs.results import (
    TABLE_METRICS,
    columns_of,
    line_groups,
    markdown_table,
    plot_lines,
    write_csv,
)

log = logging.getLogger("segflow.eval")


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


def data_tag(name: str | None, split_dir: str | Path) -> str:
    """``<data name>-<6 hex of the split folder's absolute path>``: two datasets of the same
    kind (``data=dca1`` with two ``data.root``) get two evaluation folders."""
    digest = hashlib.sha256(str(Path(split_dir).resolve()).encode()).hexdigest()[:6]
    return f"{name or 'data'}-{digest}"


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
        if "eval_crop" not in (given or {}):  # whole images unless asked
            data_cfg.eval_crop = None
        other = None
    datamodule = instantiate(debug_data(cfg, data_cfg, given or {}))
    if split not in datamodule.split_dirs:
        raise ConfigError(f"split={split} is not one of {sorted(datamodule.split_dirs)}")
    # The Trainer evaluates the test split: point it at the chosen folder. A missing val
    # folder makes the datamodule hold out part of train, exactly as during training.
    datamodule.split_dirs["test"] = datamodule.split_dirs[split]
    stored_dirs = {k: stored.data.get(f"{k}_dir") for k in ("train", "val", "test")}
    same_folder = (stored_dirs.get(split) is not None and Path(str(stored_dirs[split])).resolve()
                   == Path(datamodule.split_dirs[split]).resolve())
    if other == stored.data.get("name") and same_folder:
        other = None
    elif other is not None or not same_folder:  # another dataset, or the same kind elsewhere
        other = data_tag(other or stored.data.get("name"), datamodule.split_dirs[split])
    return datamodule, other


def _print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    # Hydra's console handler prints it; the file handler keeps it in eval.log.
    log.info("%s", f"\n{title}\n\n{markdown_table(rows, columns)}")


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate a run under every grid combination; returns one summary row per setting."""
    route_lightning_logs_to_file()
    validate_eval(cfg)
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {cfg.split!r}")
    overrides = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else {}
    module, stored, meta = load_model(cfg.run_dir, cfg.which, cfg.weights, overrides)
    datamodule, other_data = build_datamodule(cfg, stored, cfg.split)
    in_ch = getattr(module.net, "in_channels", None)
    if in_ch is not None and in_ch != datamodule.channels:
        raise ConfigError(f"the model takes {in_ch}-channel images but data.channels="
                          f"{datamodule.channels}; set data.channels={in_ch}")
    base = debug_sampling(module.method, cfg, log)  # debug=... only; grid.* as given
    combos = grid_combinations(cfg.get("grid") or {}, tuple(base.sampling_keys))
    root = eval_root(cfg.get("output_dir"), cfg.run_dir)
    writer = TestPredictionWriter(max_images=cfg.max_images)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(root),
                                      callbacks=[writer] if cfg.save_images else [])
    summaries: list[dict[str, Any]] = []
    data_name = str(given_data_name(cfg) or stored.data.get("name"))
    methods = []
    for combo in combos:
        try:
            methods.append(base.with_settings(**combo))
        except ValueError as exc:
            raise ConfigError(f"grid setting {combo}: {exc}") from None
    # Every setting gets a folder of its own that no earlier evaluation holds (a suffix _1,
    # _2 when the name is taken); claimed by rank 0 before any DDP rank starts, which reads
    # them from the environment.
    tags = [settings_tag(cfg.split, m.sampling_settings(), other_data, cfg.which, cfg.weights)
            for m in methods]
    grid_tag = f"grid_{settings_tag(cfg.split, {}, other_data, cfg.which, cfg.weights)}"
    folders = shared_claims("eval", [root / t for t in tags]
                            + ([root / grid_tag] if len(combos) > 1 else []))
    for method, out in zip(methods, folders, strict=False):
        module.method = method
        settings = module.method.sampling_settings()
        writer.folder = EvalFolder(out).images
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same noise for every setting
        with sampling_progress():  # a bar for long sampling loops (e.g. 1000-step DDPM)
            trainer.test(module, datamodule=datamodule, verbose=False)
        results, rows = module.test_results, module.test_rows
        if trainer.global_rank == 0:
            results = {**results, **image_cost(module, datamodule, cfg.split)}
        summary = {**results, **settings}  # the settings, not the mean n_samples
        summaries.append(summary)
        if trainer.global_rank != 0:
            continue
        EvalRecord(
            run_dir=str(run_folder(cfg.run_dir)), model=stored.model.get("name"),
            data=data_name, split=cfg.split, split_used=datamodule.split_used(cfg.split),
            which=cfg.which, weights=cfg.weights,
            seed=cfg.seed, settings=settings, n_images=len(rows), extra=dict(meta),
            crop=datamodule.eval_crop,  # central square (px) scored; null: whole images
            # where the images and labels are (for notebooks showing predictions beside truth)
            split_dir=str(datamodule.split_dirs[cfg.split]), image_dir=datamodule.image_dir,
            label_dir=datamodule.label_dir,
            metrics=results, timing=module.timing).write(out)  # seconds_per_image: device, warm-up
        write_csv(EvalFolder(out).per_image, rows, columns_of(rows, ["name", *TABLE_METRICS]))
        _print_table(f"{stored.model.get('name')} on {data_name}/{cfg.split} {settings or ''} "
                     f"-> {out}", [{"images": len(rows), **results}],
                     ["images", *[k for k in TABLE_METRICS if k in results]])
    if len(combos) > 1 and trainer.global_rank == 0:
        write_grid(folders[-1], summaries, list(base.sampling_keys))
    return summaries


def image_cost(module: Any, datamodule: Any, split: str) -> dict[str, float]:
    """``gflops_per_image``: counted FLOPs of segmenting the split's first image with the
    current settings — every step, ensemble member, TTA view, sliding-window tile and prior
    pass (:func:`segflow.metrics.flops.call_flops`; its own noise, the evaluation's is untouched)."""
    from segflow.metrics.flops import call_flops

    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    image = next(iter(loader))["image"][:1].to(module.device)
    generator = torch.Generator(device=image.device).manual_seed(0)
    was = module.training
    module.eval()
    try:
        return {"gflops_per_image": round(call_flops(module, image, generator=generator) / 1e9, 4)}
    finally:
        module.train(was)


def given_data_name(cfg: DictConfig) -> str | None:
    given = cfg.get("data")
    return str(given.get("name")) if given is not None and "_target_" in given else None


def write_grid(folder: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """``grid.csv``, ``grid.md`` and ``dice_vs_nfe.png`` of a quality × cost grid.

    The plot has one line per combination of the grid keys other than the one with the
    most values (usually the number of steps; see :func:`segflow.runs.results.line_groups`)."""
    columns = [*keys, *[k for k in TABLE_METRICS if any(k in r for r in rows)]]
    grid = EvalFolder(folder)
    write_csv(grid.file("grid.csv"), rows, columns_of(rows, columns))
    atomic_write_text(grid.file("grid.md"), markdown_table(rows, columns))
    plot_lines(grid.file("dice_vs_nfe.png"), rows, "nfe_per_image",
               ["dice", "cldice", "seconds_per_image"], group_by=line_groups(rows, keys), log_x=True,
               title="quality vs sampling cost (NFE per image = NFE per member x ensemble size)")
    _print_table(f"quality x cost grid -> {folder}", rows, columns)
