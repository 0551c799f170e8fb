"""``python -m segflow.bench.profile``: profile one training step of a model preset and
write the breakdown (attention, convolutions, norms, optimiser, data) to a file.

Examples:
    python -m segflow.bench.profile model=flow                       # GPU: 16 x 320 px, bf16
    python -m segflow.bench.profile model=medsegdiff --size 64 --batch 2 --device cpu
    python -m segflow.bench.profile model=flow model.net.use_checkpoint=true --trace

Positional arguments are training-config overrides (``model=<preset>``, ``model.*``).
Writes ``profile.md`` and ``profile.json`` (and on CUDA ``memory_<model>.pickle``, a
snapshot for https://pytorch.org/memory_viz) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("segflow.bench")


def hardware(device) -> str:
    """The device in words (GPU name, or the CPU model and its logical cores)."""
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m segflow.bench.profile",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="training-config overrides, e.g. model=flow")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda:1")
    p.add_argument("--size", type=int, help="crop side (default 320 on CUDA, 64 on CPU)")
    p.add_argument("--batch", type=int, help="crops per step (default 16 on CUDA, 2 on CPU)")
    p.add_argument("--precision", help="32-true | bf16-mixed | 16-mixed (default bf16-mixed "
                                       "on CUDA, 32-true on CPU)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and batch")
    p.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    p.add_argument("--out", help="output folder (default <output_root>/profile/<time>)")
    args = p.parse_args(argv)

    import torch

    from segflow.bench.profiling import build, markdown, profile_step
    from segflow.conf.resolvers import register_resolvers
    from segflow.errors import ConfigError
    from segflow.inference import resolve_device
    from segflow.runs.folders import output_root

    register_resolvers()
    try:
        device = resolve_device(args.device)
        name, module = build(args.overrides)
    except (ConfigError, ValueError) as exc:
        print(f"segflow.bench.profile: {exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - Hydra's errors name the override
        print(f"segflow.bench.profile: the overrides {args.overrides} do not compose: "
              f"{str(exc).splitlines()[0]}")
        return 2
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    out = Path(args.out or output_root() / "profile" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    prof = profile_step(name, module.net, module.method, image_size=args.size or (320 if cuda else 64),
                        batch=args.batch or (16 if cuda else 2),
                        precision=args.precision or ("bf16-mixed" if cuda else "32-true"),
                        device=device, out_dir=out, steps=args.steps,
                        channels_last=args.channels_last, optimizer=module.optimizer_factory,
                        trace=args.trace)
    md = markdown(prof, hardware(device))
    (out / "profile.md").write_text(md)
    (out / "profile.json").write_text(json.dumps(asdict(prof), indent=1))
    print(md)
    print(f"written: {out / 'profile.md'}, {out / 'profile.json'}")
    return 0
