"""Where a training step's time and memory go: one (network, method) step under
:mod:`torch.profiler`, its operators grouped into attention, convolutions, norms,
optimiser, data and the rest.

The step is what training runs (the method's loss under autocast, backward, the
configured optimiser with its fused kernel on CUDA), on a synthetic batch that is built
on the host and moved to the device inside the step (the ``data`` part: the host-side
transfer, not the loader's workers; those are measured by the loader benchmark and the
``LoaderWait`` callback). With CUDA the profile has device times too and
``torch.cuda.memory._record_memory_history`` writes a snapshot for
https://pytorch.org/memory_viz.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from segflow.bench.timing import autocast, peak_memory_mib, reset_peak_memory, sync
from segflow.engine import optim
from segflow.infra.errors import ConfigError
from segflow.methods.base import Method

#: The step's parts, as ``record_function`` regions: every operator inside ``data`` or
#: ``optimizer`` counts there, the others by their name (:data:`CATEGORIES`).
REGIONS = ("data", "forward", "backward", "optimizer")
#: Operator categories by name, first match wins (lower-case substrings).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("attention", "softmax", "sdpa", "flash")),
    ("norms", ("group_norm", "batch_norm", "layer_norm", "instance_norm", "groupnorm",
               "batchnorm", "layernorm")),
    ("convolutions", ("conv", "cudnn", "winograd", "implicit_gemm")),
    ("matmuls", ("addmm", "::mm", "bmm", "matmul", "linear", "gemm", "cutlass")),
]
#: Region → category of everything inside it.
REGION_CATEGORY = {"data": "data", "optimizer": "optimiser"}


def category(name: str, region: str | None = None) -> str:
    """The category of an operator: its region's (data, optimiser), else by its name;
    ``elementwise & other`` when none matches."""
    if region in REGION_CATEGORY:
        return REGION_CATEGORY[region]
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "elementwise & other"


@dataclass
class Profile:
    """One profiled step: per category and region, milliseconds per step."""

    model: str
    device: str
    precision: str
    batch: int
    image_size: int
    steps: int
    step_ms: float = 0.0
    peak_mem_mib: float | None = None
    peak_mem_kind: str = "n/a"
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    regions: dict[str, float] = field(default_factory=dict)
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _self_device_us(e: Any) -> float:
    return float(getattr(e, "self_device_time_total", 0) or 0)


def _region(e: Any) -> str | None:
    """The nearest enclosing step region of a profiler event."""
    node = e.cpu_parent
    while node is not None:
        if node.name in REGIONS:
            return node.name
        node = node.cpu_parent
    return None


def summarise(events: Any, steps: int, on_cuda: bool) -> tuple[dict, dict, list]:
    """(categories, regions, top operators) from ``prof.events()``: self times in ms per
    step (host, and device with CUDA), region totals (host) in ms per step."""
    cats: dict[str, dict[str, float]] = {}
    regions: dict[str, float] = {}
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        if e.name in REGIONS:
            regions[e.name] = regions.get(e.name, 0.0) + e.cpu_time_total / 1e3 / steps
            continue
        if e.name.startswith("ProfilerStep"):
            continue
        c = category(e.name, _region(e))
        cpu, dev = e.self_cpu_time_total / 1e3 / steps, _self_device_us(e) / 1e3 / steps
        row = cats.setdefault(c, {"cpu_ms": 0.0, "device_ms": 0.0, "calls": 0.0})
        op = ops.setdefault((e.name, c), {"op": e.name, "category": c, "cpu_ms": 0.0,
                                          "device_ms": 0.0, "calls": 0.0})
        for r in (row, op):
            r["cpu_ms"] += cpu
            r["device_ms"] += dev
            r["calls"] += 1 / steps
    by = "device_ms" if on_cuda else "cpu_ms"
    total = sum(r[by] for r in cats.values()) or 1.0
    for r in cats.values():
        r["share"] = r[by] / total
    top = sorted(ops.values(), key=lambda r: -r[by])[:15]
    return dict(sorted(cats.items(), key=lambda kv: -kv[1][by])), regions, top


def profile_step(name: str, net: nn.Module, method: Method, *, image_size: int, batch: int,
                 precision: str, device: torch.device, out_dir: Path, steps: int = 3,
                 warmup: int = 1, channels_last: bool = False,
                 optimizer: optim.OptimizerFactory | None = None, trace: bool = False,
                 seed: int = 0) -> Profile:
    """Profile ``steps`` training steps (after ``warmup`` unprofiled ones) and write
    ``profile_<name>.json`` (+ ``trace_<name>.json`` with ``trace``, and
    ``memory_<name>.pickle`` on CUDA) to ``out_dir``."""
    on_cuda = device.type == "cuda"
    net = net.to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        net = net.to(memory_format=fmt)
    opt = optim.build_optimizer(optim.optimizer_factory(optimizer), net, fused=True)
    gen = torch.Generator().manual_seed(seed)
    host = {"image": torch.randn(batch, net.in_channels, image_size, image_size, generator=gen),
            "mask": (torch.rand(batch, net.out_channels, image_size, image_size, generator=gen)
                     > 0.9).float(),
            "valid": torch.ones(batch, 1, image_size, image_size)}
    if on_cuda:
        host = {k: v.pin_memory() for k, v in host.items()}

    def step() -> None:
        with record_function("data"):
            b = {k: v.to(device, non_blocking=True).contiguous(memory_format=fmt)
                 for k, v in host.items()}
        with record_function("forward"), autocast(device, precision):
            loss = method.loss(net, b["image"], b["mask"], b["valid"])["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    reset_peak_memory(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    if on_cuda:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    start = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            step()
        sync(device)
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    if on_cuda:
        path = out_dir / f"memory_{name}.pickle"
        torch.cuda.memory._dump_snapshot(str(path))
        torch.cuda.memory._record_memory_history(enabled=None)
        files["memory_snapshot"] = str(path)
    if trace:
        path = out_dir / f"trace_{name}.json"
        prof.export_chrome_trace(str(path))
        files["chrome_trace"] = str(path)
    cats, regions, top = summarise(prof.events(), steps, on_cuda)
    peak, kind = peak_memory_mib(device)
    return Profile(name, str(device), precision, batch, image_size, steps, step_ms, peak, kind,
                   cats, regions, top, files)


def markdown(p: Profile, hardware: str) -> str:
    """The breakdown of one profile as Markdown tables."""
    dev = p.device.startswith("cuda")
    by = "device" if dev else "host"
    lines = [f"### `{p.model}`: {p.batch} x {p.image_size} px, {p.precision}, {hardware}", "",
             f"Profiled step (with the profiler's overhead): {p.step_ms:.1f} ms; peak memory "
             f"{p.peak_mem_mib:.0f} MiB ({p.peak_mem_kind})." if p.peak_mem_mib is not None
             else f"Profiled step: {p.step_ms:.1f} ms.", "",
             f"| category | {by} ms/step | share | calls/step |", "|---|---|---|---|"]
    key = "device_ms" if dev else "cpu_ms"
    for cat, r in p.categories.items():
        lines.append(f"| {cat} | {r[key]:.2f} | {100 * r['share']:.1f} % | {int(r['calls'])} |")
    lines += ["", "| part of the step | host ms/step |", "|---|---|"]
    lines += [f"| {k} | {p.regions.get(k, 0.0):.2f} |" for k in REGIONS]
    lines += ["", f"| top operators ({by} self time) | category | ms/step |", "|---|---|---|"]
    lines += [f"| `{o['op'][:70]}` | {o['category']} | {o[key]:.2f} |" for o in p.top_ops[:10]]
    return "\n".join(lines) + "\n"


def build(overrides: list[str]) -> tuple[str, Any]:
    """(preset name, SegModule) of a training config composed with ``overrides``.

    Raises:
        ConfigError: the overrides do not compose (Hydra's first line, naming the override).
    """
    from hydra import compose
    from hydra.utils import instantiate

    from segflow.bench.presets import hydra_context

    with hydra_context():
        try:
            cfg = compose(config_name="train", overrides=overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra's errors name the override
            raise ConfigError(f"the overrides {overrides} do not compose: "
                              f"{str(exc).splitlines()[0]}") from None
        return str(cfg.model.name), instantiate(cfg.model)


def run_profile(overrides: list[str], device: str = "auto", size: int | None = None,
                batch: int | None = None, precision: str | None = None, steps: int = 3,
                channels_last: bool = False, trace: bool = False,
                out: str | Path | None = None) -> Path:
    """``segflow.bench.profile``'s work: profile ``steps`` training steps of the composed
    preset and write ``profile.md`` / ``profile.json`` into ``out`` (default a new
    ``<output_root>/profile/<time>``); returns the folder. Defaults: 16 × 320 px in
    bf16-mixed on CUDA, 2 × 64 px in 32-true on the CPU."""
    import json
    from dataclasses import asdict

    from segflow.inference.window import resolve_device
    from segflow.infra.atomic import write_text
    from segflow.infra.machine import hardware
    from segflow.runs.layout import Layout

    dev = resolve_device(device)
    name, module = build(overrides)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    folder = Path(out) if out else Layout.at().tool("profile")
    prof = profile_step(name, module.net, module.method, image_size=size or (320 if cuda else 64),
                        batch=batch or (16 if cuda else 2),
                        precision=precision or ("bf16-mixed" if cuda else "32-true"),
                        device=dev, out_dir=folder, steps=steps, channels_last=channels_last,
                        optimizer=module.optimizer_factory, trace=trace)
    md = markdown(prof, hardware(dev))
    write_text(folder / "profile.md", md)
    write_text(folder / "profile.json", json.dumps(asdict(prof), indent=1))
    print(md)
    print(f"written: {folder / 'profile.md'}, {folder / 'profile.json'}")
    return folder

