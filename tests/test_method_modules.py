"""Methods are nn.Modules: what a method registers (a frozen teacher network, a buffer) is
saved in the Lightning checkpoint, restored from it, moved with the model and never
optimised; the method interface declares the noise and the network call."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from toy_generative import ToyDenoiser, ToyFlow

from segflow.engine.module import SegModule
from segflow.methods import Supervised
from segflow.methods.base import GenerativeMethod
from segflow.networks import UNet


class TeacherSupervised(Supervised):
    """Supervised loss plus a distillation term towards a frozen teacher network."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher = nn.Conv2d(1, 1, 3, padding=1).requires_grad_(False)
        self.register_buffer("temperature", torch.tensor(1.0))

    def loss(self, net: nn.Module, image: Tensor, mask: Tensor,
             valid: Tensor | None = None) -> dict[str, Tensor]:
        out = super().loss(net, image, mask, valid)
        distill = (net(image) - self.teacher(image) / self.temperature).pow(2).mean()
        return {**out, "loss": out["loss"] + distill, "distill": distill}


def batches(n: int = 2) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 1, 16, 16, generator=g),
             "mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float()} for _ in range(n)]


def test_method_modules_and_buffers_are_checkpointed_and_not_optimised(tmp_path):
    torch.manual_seed(0)
    module = SegModule(UNet(base_channels=4, depth=2), TeacherSupervised(), log_image_enabled=False)
    with torch.no_grad():
        module.method.teacher.weight.fill_(0.25)
        module.method.temperature.fill_(3.0)
    teacher_before = module.method.teacher.weight.clone()
    net_before = [p.clone() for p in module.net.parameters()]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(batches(), batch_size=None))
    assert torch.equal(module.method.teacher.weight, teacher_before)  # frozen: not optimised
    assert any(not torch.equal(a, b) for a, b in zip(net_before, module.net.parameters(), strict=True))
    assert {"method.teacher.weight", "method.teacher.bias", "method.temperature"} <= set(
        module.state_dict())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)

    fresh = SegModule(UNet(base_channels=4, depth=2), TeacherSupervised(), log_image_enabled=False)
    assert not torch.equal(fresh.method.teacher.weight, teacher_before)
    fresh.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    assert torch.equal(fresh.method.teacher.weight, teacher_before)
    assert float(fresh.method.temperature) == 3.0
    # Settings copies share the method's modules; the copy's own registry stays separate.
    copy = fresh.method.with_settings()
    assert copy.teacher is fresh.method.teacher
    copy.register_buffer("extra", torch.zeros(1))
    assert "extra" not in dict(fresh.method.named_buffers())
    fresh.to(torch.float64)
    assert fresh.method.temperature.dtype == torch.float64  # buffers move with the model


def test_noise_and_network_call_are_declared():
    net, image = ToyDenoiser(), torch.randn(2, 1, 8, 8)
    flow = ToyFlow(n_samples=3, steps=2)
    assert isinstance(flow, GenerativeMethod)
    assert flow.noise_shape(net, image) == (6, 1, 8, 8)
    assert net(*flow.net_inputs(net, image)).shape == (2, 1, 8, 8)
    noise = torch.randn(6, 1, 8, 8)
    a, b = flow.predict(net, image, noise=noise), flow.predict(net, image, noise=noise)
    assert torch.equal(a.probs, b.probs)  # the declared noise decides the sample
    assert not torch.equal(a.probs, flow.predict(net, image, noise=-noise).probs)
    seg, sup = UNet(base_channels=4, depth=2), Supervised()
    assert sup.noise_shape(seg, image) is None
    assert seg(*sup.net_inputs(seg, image)).shape == (2, 1, 8, 8)


def test_step_noise_source_drives_stochastic_samplers():
    from segflow.methods import Diffusion

    net, image = ToyDenoiser(), torch.randn(1, 1, 8, 8)
    ddpm = Diffusion(timesteps=20, sampler="ddpm", steps=5)
    noise = torch.randn(1, 1, 8, 8)
    calls: list[int] = []

    def zeros() -> Tensor:
        calls.append(len(calls))
        return torch.zeros_like(noise)

    a = ddpm.predict(net, image, noise=noise, step_noise=zeros)
    b = ddpm.predict(net, image, noise=noise, step_noise=zeros)
    # 5 DDPM steps: 4 stochastic ones (the last, into the clean end, adds no noise)
    assert torch.equal(a.probs, b.probs) and len(calls) == 8
    g = torch.Generator().manual_seed(0)
    c = ddpm.predict(net, image, noise=noise, generator=g)  # default: the generator's noise
    assert not torch.equal(a.probs, c.probs)
