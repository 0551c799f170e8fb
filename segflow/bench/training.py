"""Training throughput, peak memory, FLOPs and MFU of one (network, method) pair."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segflow.bench.timing import (
    Row,
    autocast,
    autocast_dtype,
    error_line,
    peak_memory_mib,
    reset_peak_memory,
    stopwatch,
)
from segflow.engine import optim
from segflow.engine.callbacks.ema import EMAModel
from segflow.methods.base import Method


@dataclass
class TrainCase(Row):
    """One row of the training table."""

    model: str
    image_size: int
    batch: int
    precision: str
    channels_last: bool
    compile: bool
    params_m: float
    ema: bool = False
    fused_adamw: bool = False
    variant: str = ""
    images_per_s: float | None = None
    step_ms: float | None = None
    peak_mem_mib: float | None = None
    peak_mem_kind: str = "n/a"
    fwd_gflops_per_image: float | None = None
    train_gflops_per_image: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None
    error: str | None = None


def synthetic_batch(in_channels: int, out_channels: int, batch: int, size: int,
                    device: torch.device, channels_last: bool, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
    """A normalised image batch (B, C_in, S, S), a sparse {0,1} mask (B, C_out, S, S) and an
    all-ones valid map — the shapes a training step sees; values do not change the cost."""
    image = torch.randn(batch, in_channels, size, size, generator=generator)
    mask = (torch.rand(batch, out_channels, size, size, generator=generator) > 0.9).float()
    valid = torch.ones(batch, 1, size, size)
    out = {"image": image, "mask": mask, "valid": valid}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return {k: v.to(device).contiguous(memory_format=fmt) for k, v in out.items()}


def count_flops(net: nn.Module, method: Method, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of one eager float32 training step on ``batch``.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
    attention — element-wise ops are not counted, as usual for MFU). The forward is the
    method's loss, i.e. the network evaluations its objective makes.
    """
    net.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fwd_counter:
        out = method.loss(net, batch["image"], batch["mask"], batch["valid"])
    with FlopCounterMode(display=False) as bwd_counter:
        out["loss"].backward()
    net.zero_grad(set_to_none=True)
    fwd = fwd_counter.get_total_flops()
    return fwd, fwd + bwd_counter.get_total_flops()


def bench_training(name: str, net: nn.Module, method: Method, *, image_size: int, batch: int,
                   precision: str, channels_last: bool, compile: bool, warmup_steps: int,
                   steps: int, device: torch.device,
                   optimizer: optim.OptimizerFactory | None = None,
                   scheduler: optim.SchedulerFactory | None = None, fused_adamw: bool = True,
                   flops: bool = True, peak_tflops: float | None = None,
                   seed: int = 0, ema_decay: float | None = None, variant: str = "") -> TrainCase:
    """Time ``steps`` optimiser steps (loss, backward, optimiser and LR-schedule step) on
    a fixed synthetic batch, with the run's ``model.optimizer`` / ``model.scheduler``
    (built as training builds them, :mod:`segflow.engine.optim`; None: SegModule's defaults).
    ``fused_adamw`` asks the fused CUDA kernel of optimisers that have one. ``variant``
    labels the row (``train.variants``).

    No data loading and no Lightning loop: this is the model's compute cost; the loader
    has its own benchmark. With ``ema_decay`` each step also updates a weight EMA
    (:class:`segflow.engine.callbacks.ema.EMAModel`, what ``model.ema_decay`` adds to training). The network is deep-copied so cases do not share weights or
    compiled graphs.

    Returns:
        the filled :class:`TrainCase` (``error`` set instead when the case could not run,
        e.g. out of memory or no compiler for ``torch.compile``).
    """
    net = copy.deepcopy(net).to(device)
    case = TrainCase(name, image_size, batch, str(precision), bool(channels_last), bool(compile),
                     params_m=sum(p.numel() for p in net.parameters()) / 1e6,
                     ema=ema_decay is not None,
                     fused_adamw=bool(fused_adamw) and device.type == "cuda", variant=variant)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    try:
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        net.train()
        data = synthetic_batch(net.in_channels, net.out_channels, batch, image_size, device,
                               channels_last, gen)
        if flops:
            fwd, total = count_flops(net, method, data)
            case.fwd_gflops_per_image = fwd / batch / 1e9
            case.train_gflops_per_image = total / batch / 1e9
        step_net = torch.compile(net) if compile else net
        opt = optim.build_optimizer(optim.optimizer_factory(optimizer), net, fused_adamw)
        sched = optim.build_scheduler(scheduler or optim.warmup_schedule, opt,
                                      warmup_steps + steps)
        scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(precision) == torch.float16)
        average = EMAModel(net, ema_decay) if ema_decay is not None else None
        trained = net  # the EMA follows the eager module (compiled or not, same weights)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = method.loss(step_net, data["image"], data["mask"], data["valid"])["loss"]
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if average is not None:
                average.update_parameters(trained)

        for _ in range(warmup_steps):
            step()
        reset_peak_memory(device)
        with stopwatch(device) as elapsed:
            for _ in range(steps):
                step()
        seconds = elapsed[0]
        case.step_ms = 1e3 * seconds / steps
        case.images_per_s = batch * steps / seconds
        case.peak_mem_mib, case.peak_mem_kind = peak_memory_mib(device)
        if case.train_gflops_per_image is not None:
            case.achieved_tflops = case.train_gflops_per_image * case.images_per_s / 1e3
            if device.type == "cuda" and peak_tflops:
                case.mfu = case.achieved_tflops / peak_tflops
    except Exception as exc:  # a benchmark row that cannot run is reported, not fatal
        case.error = error_line(exc)
    finally:
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return case
