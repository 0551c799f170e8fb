"""Sampling cost: seconds per image vs network evaluations (NFE), per ensemble size."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segflow.bench.timing import Row, autocast, error_line, stopwatch
from segflow.methods.base import Method


@dataclass
class SampleCase(Row):
    """One row of the sampling table."""

    model: str
    method: str
    settings: dict[str, Any]
    n_samples: int
    batch: int
    image_size: int
    precision: str
    nfe: int | None = None
    seconds_per_image: float | None = None
    ms_per_nfe: float | None = None
    skipped: str | None = None
    error: str | None = None
    members: int = field(init=False)

    def __post_init__(self) -> None:
        self.members = self.batch * self.n_samples  # samples per network call

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "defaults"


@torch.no_grad()
def bench_sampling(name: str, net: nn.Module, method: Method,
                   settings_list: Sequence[Mapping[str, Any]], *, n_samples: Sequence[int],
                   image_size: int, batch: int, precision: str, channels_last: bool,
                   compile: bool, device: torch.device, repeats: int = 1,
                   max_seconds: float | None = None, seed: int = 0) -> list[SampleCase]:
    """Time ``method.predict`` for each settings dict × ensemble size.

    Generative methods get ``with_settings(n_samples=n, **settings)``; one-pass methods are
    timed once (NFE 1, ensemble 1) as the reference. Before each ensemble size the
    network runs two untimed forwards at that batch (warm-up, cuDNN autotune, compile)
    whose time also gives the estimate used to skip settings slower than ``max_seconds``
    (``steps`` × one forward; a solver with several evaluations per step costs more).

    Returns:
        one :class:`SampleCase` per (settings, ensemble size); ``skipped`` / ``error`` say
        why a row has no time.
    """
    generative = method.generative
    net = copy.deepcopy(net).to(device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    run_net = torch.compile(net) if compile else net
    if not generative:
        settings_list, n_samples = [{}], [1]
    cases: list[SampleCase] = []
    gen = torch.Generator(device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    image = torch.randn(batch, net.in_channels, image_size, image_size,
                        generator=torch.Generator().manual_seed(seed)).to(device)
    image = image.contiguous(memory_format=fmt)
    for n in n_samples:
        per_forward, warm_error = None, ""
        try:
            members = image.repeat_interleave(int(n), dim=0)
            with autocast(device, precision):
                run_net(*method.net_inputs(net, members))
                inputs = method.net_inputs(net, members)
                with stopwatch(device) as t:
                    run_net(*inputs)
            per_forward = t[0]
        except Exception as exc:  # reported per row below
            warm_error = error_line(exc)
        for settings in settings_list:
            settings = dict(settings)
            case = SampleCase(name, type(method).__name__, settings, int(n), batch, image_size,
                              str(precision))
            cases.append(case)
            if per_forward is None:
                case.error = warm_error
                continue
            try:
                sampler = (method.with_settings(n_samples=int(n), **settings) if generative
                           else method)
            except (ValueError, TypeError) as exc:
                case.skipped = f"invalid settings for {type(method).__name__}: {exc}"
                continue
            steps = settings.get("steps", getattr(sampler, "steps", None))
            if max_seconds and isinstance(steps, int) and steps * per_forward > max_seconds:
                case.skipped = (f"estimated {steps * per_forward:.0f} s > sampling.max_seconds="
                                f"{max_seconds:g} ({steps} steps x {per_forward * 1e3:.0f} ms)")
                continue
            try:
                best = float("inf")
                for _ in range(max(1, repeats)):
                    gen.manual_seed(seed)
                    with autocast(device, precision), stopwatch(device) as t:
                        pred = sampler.predict(run_net, image, generator=gen)
                    best = min(best, t[0])
                case.nfe = int(pred.nfe)
                case.seconds_per_image = best / batch
                case.ms_per_nfe = 1e3 * best / max(1, case.nfe)
            except Exception as exc:
                case.error = error_line(exc)
    del net, run_net
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cases


def ratio_table(cases: Sequence[SampleCase], base: str, other: str) -> list[dict[str, Any]]:
    """Wall-clock ratio ``other / base`` (seconds per image) for every pair of timed
    settings of the two presets at the same ensemble size."""
    rows = []
    timed = [c for c in cases if c.seconds_per_image is not None]
    for b in (c for c in timed if c.model == base):
        for o in (c for c in timed if c.model == other and c.n_samples == b.n_samples):
            rows.append({"n_samples": b.n_samples, base: b.label(), f"{base}_nfe": b.nfe,
                         other: o.label(), f"{other}_nfe": o.nfe,
                         "ratio": o.seconds_per_image / b.seconds_per_image})
    return rows
