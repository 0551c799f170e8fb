"""Does attention run on a fused kernel, and does the training step wait for the host?

One training step of each model preset (the method's loss under autocast, backward, the
optimiser with its fused kernel) under
``torch.nn.attention.sdpa_kernel([FLASH_ATTENTION, EFFICIENT_ATTENTION])``: PyTorch then
refuses the unfused (math) fallback, which materialises the N x N scores, with a
``RuntimeError`` — the check fails loudly instead of running slowly. The attention
operators that ran are listed (from the profiler), and on CUDA a second step runs under
``torch.cuda.set_sync_debug_mode("warn")``: every device→host synchronisation inside
the step is counted.

    python -m segflow.bench.fused_attention --models flow,medsegdiff      # GPU: 16 x 320 px, bf16
    python -m segflow.bench.fused_attention --device cpu --size 32 --batch 1 --kernels flash
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from segflow.bench.timing import autocast, error_line, sync

KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
           "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def check_model(name: str, overrides: list[str], kernels: list[str], device: torch.device,
                size: int, batch: int, precision: str) -> dict[str, Any]:
    """One preset: ``ok`` (a step ran on ``kernels``), the attention operators seen, the
    host syncs counted in a second step (CUDA), or ``error`` (the fallback refused)."""
    from segflow.bench.profiling import build
    from segflow.engine import optim

    result: dict[str, Any] = {"model": name, "kernels": kernels, "size": size, "batch": batch,
                              "precision": precision, "ok": False}
    _, module = build([f"model={name}", *overrides])
    net, method = module.net.to(device).train(), module.method
    opt = optim.build_optimizer(module.optimizer_factory, net, fused=True)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, net.in_channels, size, size, generator=g).to(device)
    mask = (torch.rand(batch, net.out_channels, size, size, generator=g) > 0.9).float().to(device)

    def step() -> None:
        with autocast(device, precision):
            loss = method.loss(net, image, mask, None)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        with sdpa_kernel([KERNELS[k] for k in kernels]):
            activities = [ProfilerActivity.CPU]
            with profile(activities=activities) as prof:
                step()
                sync(device)
            result["attention_ops"] = sorted({e.key for e in prof.key_averages()
                                              if "attention" in e.key.lower()})
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        start = time.perf_counter()
                        step()
                        result["host_step_ms"] = round(1e3 * (time.perf_counter() - start), 2)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
                result["host_syncs"] = len(syncs)
                result["sync_examples"] = sorted(set(syncs))[:3]
                sync(device)
        result["ok"] = True
    except RuntimeError as exc:
        result["error"] = error_line(exc)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (exits with a usage message on a bad one)."""
    p = argparse.ArgumentParser(prog="python -m segflow.bench.fused_attention",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="flow,medsegdiff", help="comma-separated model presets")
    p.add_argument("--kernels", default="flash,efficient",
                   help=f"the SDPA kernels allowed, comma-separated ({', '.join(KERNELS)})")
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precision", help="default bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--out", help="folder for fused_attention.json")
    p.add_argument("overrides", nargs="*", help="model overrides for every preset (model.*=...)")
    args = p.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in args.kernels if k not in KERNELS]
    if unknown or not args.kernels:
        p.error(f"--kernels: unknown {unknown}; use {', '.join(KERNELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 when any model's attention fell back (or failed)."""
    args = parse_args(argv)
    from segflow.conf.resolvers import register_resolvers
    from segflow.inference.window import resolve_device

    register_resolvers()
    kernels = args.kernels
    device = resolve_device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = check_model(name, list(args.overrides), kernels, device, args.size, args.batch,
                        precision)
        results.append(r)
        if r["ok"]:
            print(f"{name}: attention on {'/'.join(kernels)}: {', '.join(r['attention_ops']) or 'no attention'}"
                  + (f"; host syncs in one step: {r['host_syncs']}" if "host_syncs" in r else ""))
        else:
            print(f"{name}: FAILED — attention did not run on {'/'.join(kernels)}: {r['error']}",
                  file=sys.stderr)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "fused_attention.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
