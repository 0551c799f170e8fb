"""The model's speed options: ``model.compile`` (torch.compile of the network, in place),
``model.channels_last`` (weights and batches channels-last), ``model.fused_optimizer``
(the fused CUDA kernel, only on CUDA), and the GPU trainer presets' precision."""

from __future__ import annotations

import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from segflow.engine.module import SegModule, compile_options
from segflow.infra.errors import ConfigError
from segflow.infra.validate import validate_train
from segflow.methods import Supervised
from segflow.networks import UNet

from conftest import CONF


def _module(**kw) -> SegModule:
    torch.manual_seed(0)
    return SegModule(UNet(in_channels=1, base_channels=4, depth=2), Supervised(), **kw)


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(2, 1, 16, 16, generator=g),
            "mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float(),
            "valid": torch.ones(2, 1, 16, 16), "name": ["a", "b"]}


def test_compile_option_values():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(ValueError, match="model.compile must be"):
        compile_options("yes")


def test_channels_last_weights_and_batches_same_loss():
    plain, last = _module(), _module(channels_last=True)
    convs = [m.weight for m in last.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    batch = last.on_after_batch_transfer(_batch(), 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["name"] == ["a", "b"]
    assert plain.on_after_batch_transfer(_batch(), 0)["image"].is_contiguous()
    plain.train(), last.train()
    want = plain.method.loss(plain.net, **{k: _batch()[k] for k in ("image", "mask", "valid")})
    got = last.method.loss(last.net, batch["image"], batch["mask"], batch["valid"])
    torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)


def test_fused_optimizer_only_on_cuda():
    module = _module(fused_optimizer=True)
    opt = module.optimizer_factory  # configure_optimizers needs a trainer; build as it does
    from segflow.engine.optim import build_optimizer

    built = build_optimizer(opt, module.net, module.fused_optimizer)
    assert isinstance(built, torch.optim.AdamW) and not built.defaults.get("fused")


@pytest.mark.slow
def test_compiled_network_trains_and_matches_eager():
    """torch.compile of a tiny net on CPU (inductor): same outputs and gradients as eager,
    parameter names unchanged (checkpoints load either way)."""
    eager, compiled = _module(), _module(compile=True)
    compiled.setup("fit")
    assert getattr(compiled.net, "_compiled_call_impl", None) is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    b = _batch()
    start = time.perf_counter()
    for m in (eager, compiled):
        m.train()
        m.method.loss(m.net, b["image"], b["mask"], b["valid"])["loss"].backward()
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    for (name, p), q in zip(eager.net.named_parameters(), compiled.net.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    compiled.eval()
    with torch.no_grad():  # sampling goes through the same compiled forward
        torch.testing.assert_close(compiled(b["image"]).probs, eager.eval()(b["image"]).probs,
                                   rtol=1e-4, atol=1e-5)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_gpu_presets_train_in_bf16_and_options_default_off():
    for preset in ("gpu", "ddp", "fsdp"):
        assert _compose(f"trainer={preset}").trainer.precision == "bf16-mixed"
    assert _compose("trainer=default").trainer.precision == "32-true"
    cfg = _compose("model=flow")
    assert (cfg.model.compile, cfg.model.channels_last, cfg.model.fused_optimizer) == (False, False, True)


def test_a_bad_compile_value_is_one_clear_error():
    with pytest.raises(ConfigError, match="model.compile"):
        validate_train(_compose("model.compile=fast"))


def test_channels_last_run_end_to_end(train):
    import json

    _, run = train("model=unet", "model.channels_last=true")
    m = json.loads((run / "metrics.json").read_text())
    assert m["global_step"] > 0 and m["test"]["dice"] >= 0.0  # trained, validated, tested
