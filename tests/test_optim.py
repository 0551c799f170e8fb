"""The optimiser and LR schedule are configs (model.optimizer / model.scheduler): the defaults
reproduce AdamW with linear warm-up and cosine decay exactly; other choices take effect in
training and in the training benchmark alike."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose
from hydra.utils import instantiate
from test_config import _hydra  # noqa: F401 - the same autouse Hydra context

from segflow.bench.training import bench_training
from segflow.engine.optim import build_optimizer, param_groups, warmup_schedule


def configured(overrides: list[str], total: int = 40):
    """(module, optimizer, scheduler) as Lightning would configure them for ``total`` steps."""
    cfg = compose("train", overrides=[*overrides, "model.net.base_channels=4"])
    module = instantiate(cfg.model)
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)
    conf = module.configure_optimizers()
    return module, conf["optimizer"], conf["lr_scheduler"]["scheduler"], cfg


def reference_lrs(lr: float, total: int, warmup: float = 0.05, min_ratio: float = 0.01) -> list[float]:
    """AdamW warm-up/cosine rates written out independently: linear warm-up over
    int(warmup · total) steps, then a half cosine from lr to min_ratio · lr."""
    w = int(warmup * total) if warmup < 1 else int(warmup)
    out = []
    for step in range(total):
        if step < w:
            out.append(lr * (step + 1) / w)
        else:
            p = min(1.0, (step - w) / max(1, total - w))
            out.append(lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))))
    return out


def run_lrs(opt, sched, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("overrides", "lr", "warmup"), [
    (["model=unet"], 2e-3, 0.05),
    (["model=csnet", "model.learning_rate=5e-4"], 5e-4, 0.05),
    (["experiment=drive_csnet_cpu"], 3e-3, 0.03),
])
def test_default_recipe_is_adamw_with_warmup_cosine(overrides, lr, warmup):
    module, opt, sched, cfg = configured(overrides, total=100)
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    params = [p for p in module.net.parameters() if p.requires_grad]
    assert decay["params"] == [p for p in params if p.ndim > 1]
    assert no_decay["params"] == [p for p in params if p.ndim <= 1]
    assert decay["weight_decay"] == cfg.model.weight_decay and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.999) and decay["eps"] == 1e-8 and not decay["amsgrad"]
    assert not any(p is q for q in module.method.parameters() for p in params)
    assert run_lrs(opt, sched, 100) == pytest.approx(reference_lrs(lr, 100, warmup), rel=1e-12)


def test_other_optimiser_and_schedule_from_the_config():
    _, opt, sched, _ = configured(["model=unet", "model.optimizer._target_=torch.optim.SGD",
                                   "+model.optimizer.momentum=0.9", "model.scheduler.decay=constant",
                                   "model.scheduler.warmup=4"], total=20)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert run_lrs(opt, sched, 8) == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3])
    # Any torch scheduler that takes the optimiser alone works too.
    _, opt, sched, _ = configured(["model=unet", "model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
                                   "~model.scheduler.warmup", "~model.scheduler.decay",
                                   "~model.scheduler.min_lr_ratio", "+model.scheduler.step_size=2"])
    assert type(sched) is torch.optim.lr_scheduler.StepLR
    with pytest.raises(ValueError, match="model.scheduler.decay"):
        warmup_schedule(opt, 10, decay="linear")


def test_training_benchmark_uses_the_configured_optimiser():
    module, *_ = configured(["model=unet", "model.optimizer._target_=torch.optim.SGD"])
    seen = []

    def spy(groups, **kwargs):
        seen.append(kwargs)
        return module.optimizer_factory(groups, **kwargs)

    case = bench_training("unet", module.net, module.method, image_size=16, batch=1,
                          precision="32-true", channels_last=False, compile=False, warmup_steps=0,
                          steps=1, device=torch.device("cpu"), optimizer=spy,
                          scheduler=module.scheduler_factory, flops=False)
    assert case.error is None and case.step_ms > 0 and seen == [{}]  # no fused kernel on CPU
    assert len(param_groups(module.net)) == 2
    assert type(build_optimizer(module.optimizer_factory, module.net)) is torch.optim.SGD
