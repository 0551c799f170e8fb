"""No device→host synchronisation per training step on one device: the EMA update and the
stop-flag check must not read a tensor's value (bool/float/int/item) on the host."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from segflow.engine.callbacks.ema import EMAModel, ema_decay_at
from segflow.engine.callbacks.resume import InterruptCheckpoint


@contextlib.contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch):
    """Fail on any Python-level read of a tensor's value (what forces a CUDA sync)."""

    def refuse(name):
        def _raise(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} read on the host inside a training step")
        return _raise

    with monkeypatch.context() as m:
        for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
            m.setattr(torch.Tensor, name, refuse(name))
        yield


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))


def test_ema_update_matches_the_formula_without_host_reads(monkeypatch):
    net = _net()
    ema = EMAModel(net, decay=0.99, warmup=True)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(2, 1, 8, 8))  # moves the BatchNorm statistics and its counter
        with no_host_reads(monkeypatch):
            ema.update_parameters(net)
        d = ema_decay_at(n, 0.99)
        for k, v in net.state_dict().items():
            ref[k] = v.clone() if n == 0 or not v.is_floating_point() else torch.lerp(
                ref[k], v, 1.0 - d)
    averaged = ema.module.state_dict()
    for k, v in ref.items():
        assert torch.allclose(averaged[k], v, atol=1e-6, rtol=0), k
    assert int(ema.n_averaged) == 6
    assert ema_decay_at(1, 0.99) == pytest.approx(2 / 11) and ema_decay_at(10**6, 0.99) == 0.99


def test_ema_count_is_reread_after_a_checkpoint_load():
    net = _net()
    ema = EMAModel(net, decay=0.9)
    for _ in range(3):
        ema.update_parameters(net)
    other = EMAModel(copy.deepcopy(net), decay=0.9)
    other.load_state_dict(ema.state_dict())
    other.update_parameters(net)
    assert int(other.n_averaged) == 4 and other._count == 4


def _trainer(world_size: int, batches: int = 100):
    reduced = []

    def reduce(t, reduce_op):
        reduced.append(t)
        return t
    strategy = SimpleNamespace(reduce=reduce)
    return SimpleNamespace(world_size=world_size, num_training_batches=batches,
                           strategy=strategy), reduced


def test_stop_flag_on_one_device_is_a_python_check(monkeypatch):
    cb = InterruptCheckpoint()
    trainer, reduced = _trainer(1)
    module = SimpleNamespace(device=torch.device("cpu"))
    with no_host_reads(monkeypatch):
        for i in range(20):
            cb.on_train_batch_end(trainer, module, None, None, i)
    assert not reduced
    cb.signum = 15
    with pytest.raises(SIGTERMException):
        cb.on_train_batch_end(trainer, module, None, None, 20)


def test_stop_flag_under_ddp_is_reduced_every_n_batches_and_at_the_epoch_end():
    cb = InterruptCheckpoint(check_every=4)
    trainer, reduced = _trainer(2, batches=10)
    module = SimpleNamespace(device=torch.device("cpu"))
    checked = []
    for i in range(10):
        n = len(reduced)
        cb.on_train_batch_end(trainer, module, None, None, i)
        if len(reduced) > n:
            checked.append(i)
    assert checked == [3, 7, 9]
    cb.signum = 15  # this rank got the signal: nothing happens until the ranks agree
    cb.on_train_batch_end(trainer, module, None, None, 0)
    with pytest.raises(SIGTERMException):
        cb.on_train_batch_end(trainer, module, None, None, 3)
    with pytest.raises(ValueError, match="check_every"):
        InterruptCheckpoint(check_every=0)
