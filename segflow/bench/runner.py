"""Run the benchmark described by a composed ``conf/bench.yaml`` and collect the rows."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from segflow.bench.loader import bench_loader
from segflow.bench.presets import (
    CONF_DIR,
    available_presets,
    build_preset,
    compose_preset,
    extra_searchpath,
    hydra_context,
    preset_overrides,
)
from segflow.bench.sampling import bench_sampling, ratio_table
from segflow.bench.tables import to_markdown, write
from segflow.bench.timing import autocast_dtype, device_name
from segflow.bench.training import bench_training
from segflow.inference.window import resolve_device
from segflow.infra.errors import ConfigError

log = logging.getLogger("segflow.bench")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CONF_DIR.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def validate(cfg: DictConfig) -> None:
    """Fail before measuring anything on values that cannot work.

    Raises:
        ConfigError: naming the key and the fix.
    """
    for precision in [*cfg.train.precision, cfg.sampling.precision]:
        autocast_dtype(str(precision))
    train_settings(cfg.train)  # variants: known precisions and options
    if min(int(n) for n in cfg.sampling.n_samples) < 1:
        raise ConfigError(f"sampling.n_samples must be >= 1, got {list(cfg.sampling.n_samples)}")
    if min(int(w) for w in cfg.loader.workers) < 0:
        raise ConfigError(f"loader.workers must be >= 0, got {list(cfg.loader.workers)}")
    for key in ("train.batch", "train.image_size", "train.steps", "sampling.batch",
                "sampling.image_size", "loader.n_images", "loader.crop", "loader.train_bs"):
        if int(OmegaConf.select(cfg, key)) < 1:
            raise ConfigError(f"{key} must be >= 1, got {OmegaConf.select(cfg, key)}")
    if cfg.sampling.ratio and len(cfg.sampling.ratio) != 2:
        raise ConfigError(f"sampling.ratio must name two presets [base, other], got "
                          f"{list(cfg.sampling.ratio)}")


def _build_models(cfg: DictConfig, notes: list[str]) -> dict[str, Any]:
    """Compose and instantiate the requested presets; absent or broken ones become notes."""
    searchpath = extra_searchpath()
    presets = available_presets(searchpath)
    wanted = presets if str(cfg.models) == "all" else [str(m) for m in cfg.models]
    overrides = OmegaConf.to_container(cfg.model_overrides, resolve=True) or {}
    modules: dict[str, Any] = {}
    for name in wanted:
        if name not in presets:
            notes.append(f"model preset '{name}' is not in conf/model/ (have: {', '.join(presets)}): "
                         f"skipped")
            continue
        try:
            model_cfg, override_notes = compose_preset(name, int(cfg.data_channels),
                                                       preset_overrides(overrides, name), searchpath)
            notes.extend(override_notes)
            modules[name] = build_preset(model_cfg)
        except Exception as exc:  # one broken preset must not stop the others
            notes.append(f"model preset '{name}' could not be built: {type(exc).__name__}: {exc}")
    return modules


#: The options a ``train.variants`` entry may add to its precision.
VARIANT_FLAGS = ("channels_last", "compile", "fused", "ema")


def parse_variant(text: str) -> dict[str, Any]:
    """``"bf16-mixed+channels_last+fused"`` → the options of one training row: the
    precision, then any of ``channels_last``, ``compile``, ``fused`` (fused AdamW) and
    ``ema``, each on only when named (so one option is measured alone).

    Raises:
        ConfigError: an unknown precision or option.
    """
    precision, *flags = [p.strip() for p in str(text).split("+")]
    autocast_dtype(precision)
    unknown = [f for f in flags if f not in VARIANT_FLAGS]
    if unknown:
        raise ConfigError(f"train.variants: {text!r} has unknown option(s) {unknown}; write "
                          f"<precision>[+{'][+'.join(VARIANT_FLAGS)}], e.g. bf16-mixed+channels_last")
    return {"precision": precision, "channels_last": "channels_last" in flags,
            "compile": "compile" in flags, "fused_adamw": "fused" in flags, "ema": "ema" in flags,
            "variant": str(text)}


def train_settings(t: DictConfig) -> list[dict[str, Any]]:
    """The rows' options: ``train.variants`` when given, else every combination of
    ``train.precision`` x ``channels_last`` x ``compile`` x ``ema`` (``fused_adamw`` for all)."""
    if t.get("variants"):
        return [parse_variant(v) for v in t.variants]
    emas = [bool(e) for e in t.get("ema", [False])]
    return [{"precision": str(p), "channels_last": bool(c), "compile": bool(k),
             "fused_adamw": bool(t.fused_adamw), "ema": e, "variant": ""}
            for p, c, k, e in itertools.product(t.precision, t.channels_last, t.compile, emas)]


def _train_rows(cfg: DictConfig, modules: dict[str, Any], device: torch.device) -> list[dict]:
    t = cfg.train
    rows = []
    settings = train_settings(t)
    for name, module in modules.items():
        for opts in settings:
            precision, channels_last, compile_, ema = (
                opts["precision"], opts["channels_last"], opts["compile"], opts["ema"])
            case = bench_training(
                name, module.net, module.method, image_size=int(t.image_size), batch=int(t.batch),
                precision=str(precision), channels_last=bool(channels_last),
                compile=bool(compile_), warmup_steps=int(t.warmup_steps), steps=int(t.steps),
                device=device, optimizer=module.optimizer_factory,
                scheduler=module.scheduler_factory, fused_adamw=opts["fused_adamw"],
                flops=bool(t.count_flops), peak_tflops=float(cfg.peak_tflops), seed=int(cfg.seed),
                ema_decay=float(t.get("ema_decay", 0.999)) if ema else None,
                variant=opts["variant"])
            log.info("train %s %s channels_last=%s compile=%s ema=%s: %s images/s%s", name,
                     precision, channels_last, compile_, ema,
                     f"{case.images_per_s:.1f}" if case.images_per_s else "—",
                     f" ({case.error})" if case.error else "")
            rows.append(case.as_dict())
    return rows


def _sampling_rows(cfg: DictConfig, modules: dict[str, Any], device: torch.device,
                   notes: list[str]) -> tuple[list[dict], dict[str, Any] | None]:
    s = cfg.sampling
    settings_cfg = OmegaConf.to_container(s.settings, resolve=True) or {}
    cases = []
    for name, module in modules.items():
        generative = module.method.generative
        if not generative and not s.include_one_pass:
            continue
        settings = settings_cfg.get(name) or [{}]
        if generative and name not in settings_cfg:
            notes.append(f"no sampling.settings for '{name}': timed at its preset defaults "
                         f"{module.method.sampling_settings()}")
        rows = bench_sampling(
            name, module.net, module.method, settings, n_samples=[int(n) for n in s.n_samples],
            image_size=int(s.image_size), batch=int(s.batch), precision=str(s.precision),
            channels_last=bool(s.channels_last), compile=bool(s.compile), device=device,
            repeats=int(s.repeats), max_seconds=float(s.max_seconds) if s.max_seconds else None,
            seed=int(cfg.seed))
        for c in rows:
            log.info("sample %s [%s] ensemble %d: NFE %s, %s s/image%s", name, c.label(),
                     c.n_samples, c.nfe,
                     f"{c.seconds_per_image:.4f}" if c.seconds_per_image is not None else "—",
                     f" ({c.skipped or c.error})" if c.skipped or c.error else "")
        cases.extend(rows)
    ratios = None
    if s.ratio:
        base, other = (str(x) for x in s.ratio)
        timed = {c.model for c in cases if c.seconds_per_image is not None}
        missing = [m for m in (base, other) if m not in timed]
        if missing:
            notes.append(f"{other}/{base} wall-clock ratio not computed: no timed sampling for "
                         f"{', '.join(missing)}")
        else:
            ratios = {"base": base, "other": other, "rows": ratio_table(cases, base, other)}
    return [c.as_dict() for c in cases], ratios


def _loader_rows(cfg: DictConfig) -> list[dict]:
    ld = cfg.loader
    rows = []
    for workers in ld.workers:
        case = bench_loader(int(workers), source_size=int(ld.source_size),
                            n_images=int(ld.n_images), crop=int(ld.crop), train_bs=int(ld.train_bs),
                            num_samples_per_image=int(ld.num_samples_per_image),
                            epochs=int(ld.epochs), pin_memory=ld.pin_memory,
                            persistent_workers=bool(ld.persistent_workers))
        log.info("loader %d workers: %s crops/s%s", case.workers,
                 f"{case.crops_per_s:.0f}" if case.crops_per_s else "—",
                 f" ({case.error})" if case.error else "")
        rows.append(case.as_dict())
    return rows


def run_bench(cfg: DictConfig, out_dir: str | Path, command: str = "python -m segflow.bench"
              ) -> dict[str, Any]:
    """Run every enabled part of the benchmark, write ``bench.json`` + ``bench.md`` to
    ``out_dir`` and return the result (``meta``, ``notes``, ``train``, ``sampling``,
    ``ratios``, ``loader``; a disabled part is None)."""
    start = time.time()
    validate(cfg)
    device = resolve_device(str(cfg.device))
    torch.manual_seed(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.train.tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.train.tf32)
        torch.backends.cudnn.benchmark = bool(cfg.train.cudnn_benchmark)
    meta: dict[str, Any] = {
        "mode": str(cfg.mode), "command": command, "device": str(device),
        "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "git_commit": _git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": _loadavg(),
        "peak_tflops": float(cfg.peak_tflops), "mfu_reported": device.type == "cuda",
    }
    notes: list[str] = []
    if device.type != "cuda":
        notes.append("CPU run: MFU is not reported (no meaningful peak); achieved TFLOP/s are.")
    result: dict[str, Any] = {"meta": meta, "notes": notes, "train": None, "sampling": None,
                              "ratios": None, "loader": None}
    with hydra_context():
        modules = _build_models(cfg, notes) if (cfg.train.enabled or cfg.sampling.enabled) else {}
        if cfg.train.enabled:
            result["train"] = _train_rows(cfg, modules, device)
        if cfg.sampling.enabled:
            result["sampling"], result["ratios"] = _sampling_rows(cfg, modules, device, notes)
        if cfg.loader.enabled:
            result["loader"] = _loader_rows(cfg)
    meta["loadavg_end"] = _loadavg()
    meta["seconds"] = time.time() - start
    meta["config"] = OmegaConf.to_container(cfg, resolve=True)
    json_path, md_path = write(result, Path(out_dir))
    print(to_markdown(result), flush=True)
    log.info("wrote %s and %s", json_path, md_path)
    return result
