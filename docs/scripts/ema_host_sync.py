"""CPU time of one training step without an EMA, with an EMA that reads its update count back
from the device (torch's ``AveragedModel`` with an ``avg_fn`` doing ``float(n)``), and with
segflow's ``EMAModel`` (host-side count, one foreach lerp); then the EMA update alone.

    OMP_NUM_THREADS=1 python docs/scripts/ema_host_sync.py 64 4 30   # crop, batch, steps

Prints the milliseconds per step of each variant over two rounds (and the minimum): a tiny
U-Net (base_channels=8), AdamW, EMA decay 0.999.
"""

import sys
import time

import torch
from torch.optim.swa_utils import AveragedModel

from segflow.engine.callbacks.ema import EMAModel
from segflow.methods.supervised import Supervised
from segflow.networks import UNet

DECAY = 0.999


def averaged_model_with_host_count(net: torch.nn.Module) -> AveragedModel:
    """An EMA whose decay warm-up reads the update count ``n`` back to the host."""
    def avg_fn(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        if not avg.is_floating_point():
            return cur.clone()
        n = float(n)
        decay = min(DECAY, (1 + n) / (10 + n))
        return torch.lerp(avg, cur, 1 - decay)
    return AveragedModel(net, use_buffers=True, avg_fn=avg_fn)


def step(net, method, opt, x, mask, avg) -> None:
    """One optimiser step, then the EMA update (if any)."""
    opt.zero_grad()
    method.loss(net, x, mask, None)["loss"].backward()
    opt.step()
    if avg is not None:
        avg.update_parameters(net)


def main() -> None:
    size, batch, steps = (int(a) for a in sys.argv[1:4])
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {}
    for kind in ["none", "averaged_model", "ema_model"] * 2:
        torch.manual_seed(0)
        net, method = UNet(1, 1, base_channels=8), Supervised()
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x = torch.randn(batch, 1, size, size)
        mask = (torch.rand(batch, 1, size, size) > 0.9).float()
        avg = {"none": None, "averaged_model": averaged_model_with_host_count(net),
               "ema_model": EMAModel(net, DECAY)}[kind]

        args = (net, method, opt, x, mask, avg)
        for _ in range(3):
            step(*args)
        start = time.perf_counter()
        for _ in range(steps):
            step(*args)
        results.setdefault(kind, []).append(1e3 * (time.perf_counter() - start) / steps)
        if avg is not None:
            start = time.perf_counter()
            for _ in range(200):
                avg.update_parameters(net)
            ms = 1e3 * (time.perf_counter() - start) / 200
            results.setdefault(kind + "_update_only", []).append(ms)
    for kind, values in results.items():
        print(f"{kind:28s} ms: " + " ".join(f"{v:.3f}" for v in values), f"(min {min(values):.3f})")
    print("parameters:", sum(p.numel() for p in UNet(1, 1, base_channels=8).parameters()))


if __name__ == "__main__":
    main()
