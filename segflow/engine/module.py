"""``SegModule``: the only LightningModule. Drives any (method, network) pair."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from segflow.data.finite import check_finite_batch, check_finite_training
from segflow.engine.callbacks.ema import EMA
from segflow.engine.distributed import all_gather_object
from segflow.engine.optim import (
    OptimizerFactory,
    SchedulerFactory,
    build_optimizer,
    build_scheduler,
    optimizer_factory,
    warmup_schedule,
)
from segflow.inference.window import check_inference, predict_image
from segflow.infra.version import VERSION
from segflow.methods.base import Method, Prediction
from segflow.metrics import EvalMetrics, VesselMetrics

EVAL_SEED = 20240601  # base seed of the validation/test sampling noise (see eval_generator)


def timing_device(device: torch.device, warmup: int) -> dict[str, Any]:
    """Where ``seconds_per_image`` is measured: ``{"device": "cuda:0 (NVIDIA H100 ...)" or
    "cpu (8 threads)", "warmup_passes": n}``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        n = torch.get_num_threads()
        name = f"{device.type} ({n} thread{'s' if n != 1 else ''})"
    return {"device": name, "warmup_passes": int(warmup)}


def compile_options(value: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``model.compile`` as ``torch.compile`` keyword arguments, or None (no compiling)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict) or hasattr(value, "items"):
        return dict(value.items())
    raise ValueError(f"model.compile must be true, false or a dict of torch.compile options "
                     f"(e.g. {{mode: max-autotune}}), got {value!r}")


class SegModule(pl.LightningModule):
    """Optimisation, metrics and logging around a method and a network.

    Training calls ``method.loss(net, image, mask, valid)``; validation and test call
    ``method.predict`` on whole images (padded to the network's multiple) and update
    :class:`~segflow.metrics.VesselMetrics` (validation: the fast pixel metrics that pick
    the best checkpoint) or :class:`~segflow.metrics.EvalMetrics` (test: the full suite,
    with one row of per-image metrics, NFE and seconds per image in ``test_rows``). It
    never asks which family the method is.

    Args:
        net: the network (``SegNet`` or ``Denoiser``; the method checks it).
        method: the training objective and sampler.
        name: the model's name (run folders, reports).
        learning_rate: peak learning rate (what ``model.optimizer`` uses by default).
        weight_decay: weight decay (not applied to biases and norm parameters).
        optimizer: a factory of the optimiser from parameter groups (``model.optimizer``,
            a ``_partial_`` target; see :mod:`segflow.engine.optim`). None: AdamW with
            ``learning_rate``, ``weight_decay`` and betas (0.9, 0.999).
        scheduler: a factory ``(optimizer, total_steps) → LR scheduler`` stepped every
            optimiser step (``model.scheduler``). None:
            :func:`segflow.engine.optim.warmup_schedule` (5 % linear warm-up, cosine decay to 1 %).
        threshold: probability threshold of the binary metrics.
        log_image_enabled: log image grids of validation images to TensorBoard.
        log_image_names: the validation images to log (file names or stems); empty = the
            first ``num_log_images``.
        num_log_images: how many to log when none are named.
        ema_decay: keep an exponential moving average of the weights with this decay
            (e.g. 0.9999 for generative models); validation, test and checkpoints use
            the averaged weights. None disables it.
        inference: how whole images are predicted — keys of
            :func:`segflow.inference.window.predict_image` (``tile_size``, ``overlap``,
            ``max_whole_size``, ``sigma_scale``, ``tile_batch``). Empty: pad to the
            network's multiple and predict in one pass. The training config passes the
            dataset's ``data.inference`` here.
        compile: ``torch.compile`` the network (training and sampling share the compiled
            forward; the weights and checkpoints are the eager module's). False (the
            default), True, or a dict of ``torch.compile`` options (e.g. ``{mode:
            max-autotune}``). Applied in :meth:`setup`, after the callbacks copied the model.
        channels_last: keep the network's weights and every 4-D batch tensor in the
            channels-last memory format (faster convolutions on tensor-core GPUs).
        fused_optimizer: ask the optimiser's fused CUDA kernel (AdamW, Adam, SGD) when the
            network is on CUDA; ignored elsewhere.
    """

    def __init__(self, net: nn.Module, method: Method, name: str = "model",
                 learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                 optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, threshold: float = 0.5,
                 log_image_enabled: bool = True, log_image_names: list[str] | tuple = (),
                 num_log_images: int = 4, ema_decay: float | None = None,
                 inference: dict[str, Any] | None = None,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False,
                 fused_optimizer: bool = True):
        super().__init__()
        method.check_net(net)
        self.net, self.method, self.name = net, method, name
        self.optimizer_factory = optimizer_factory(optimizer, learning_rate, weight_decay)
        self.scheduler_factory = scheduler or warmup_schedule
        # Plain Python types only in hyper-parameters (checkpoints load with weights_only=True);
        # the optimiser and schedule are in the run config stored with every checkpoint.
        log_image_names = [str(n) for n in (log_image_names or [])]
        inference = check_inference(inference)
        self.save_hyperparameters(ignore=["net", "method", "optimizer", "scheduler", "compile"])
        self.log_image_enabled = log_image_enabled
        self.log_image_names = log_image_names
        self.num_log_images = num_log_images
        self.ema_decay = ema_decay
        self.inference = inference
        self.compile_options = compile_options(compile)
        self.channels_last = bool(channels_last)
        self.fused_optimizer = bool(fused_optimizer)
        if self.channels_last:  # before any copy (EMA): .to(device) keeps the format
            self.net.to(memory_format=torch.channels_last)
        self.val_metrics = VesselMetrics(threshold)
        self.test_metrics = EvalMetrics(threshold)
        self.test_results: dict[str, float] = {}
        # One dict per test image (name, per-image metrics, nfe, seconds), gathered from
        # every rank at the end of the test epoch (sorted by name).
        self.test_rows: list[dict[str, Any]] = []
        # Untimed passes on the first test batch of every test epoch (every setting of an
        # eval grid), and where seconds_per_image was measured (set by test_step).
        self.timing_warmup = 1
        self.timing: dict[str, Any] = {}
        self._warmups_left = 0
        # The resolved run config, stored in every checkpoint so that one file is enough
        # to rebuild the model (see segflow.runs.checkpoints.load_model). Set by the entry point.
        self.run_config: dict[str, Any] | None = None

    # -- performance options ------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Compile the network (``compile``) once, in place: ``net.compile()`` keeps its
        parameters and state-dict keys, so checkpoints and the weight EMA are unchanged."""
        if self.compile_options is not None and not getattr(self.net, "_compiled_call_impl", None):
            self.net.compile(**self.compile_options)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``channels_last``: every 4-D tensor of the batch in the channels-last format."""
        if self.channels_last and isinstance(batch, dict):
            return {k: v.contiguous(memory_format=torch.channels_last)
                    if torch.is_tensor(v) and v.ndim == 4 else v for k, v in batch.items()}
        return batch

    # -- steps --------------------------------------------------------------------------
    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Segment whole images (B, C, H, W) of any size with the method's current settings
        (one pass, or a sliding window above ``inference.max_whole_size``); ``generator``
        seeds the sampling noise of generative methods."""
        return predict_image(self.method, self.net, image, generator=generator, **self.inference)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.method.loss(self.net, batch["image"], batch["mask"], batch.get("valid"))
        self._check_diverged(out["loss"], "the loss is")
        bs = batch["image"].shape[0]
        self.log("train/loss_step", out["loss"], on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=bs)
        return out["loss"]

    def _check_diverged(self, values: Tensor, what: str) -> None:
        """Stop training with one sentence when ``values`` are NaN / Inf (before an
        optimiser step or a checkpoint of such weights)."""
        if bool(torch.isfinite(values.detach()).all()):
            return
        precision, newest = None, None
        if self._trainer is not None:
            precision = self.trainer.precision
            folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
            ckpts = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder else []
            newest = ckpts[-1] if ckpts else None
        check_finite_training(values, what, self.global_step, self.hparams.get("learning_rate"),
                              precision, newest)

    @staticmethod
    def eval_generator(batch: dict[str, Any]) -> torch.Generator:
        """Sampling noise for an evaluation batch, seeded by its first image's index in the
        split: generative methods draw the same noise for the same image at every
        validation, on any number of ranks, and in ``segflow.eval``, so their metrics move
        only with the weights and the sampling settings. One-pass methods ignore it."""
        image = batch["image"]
        index = batch.get("index")
        seed = int(index.reshape(-1)[0]) if torch.is_tensor(index) and index.numel() else 0
        return torch.Generator(device=image.device).manual_seed(EVAL_SEED + seed)

    def _timed_forward(self, image: Tensor, generator: torch.Generator | None = None
                       ) -> tuple[Prediction, float]:
        """Predict and measure the wall-clock seconds of the prediction alone."""
        if image.device.type == "cuda":
            torch.cuda.synchronize(image.device)
        start = time.perf_counter()
        pred = self(image, generator)
        if image.device.type == "cuda":
            torch.cuda.synchronize(image.device)
        return pred, time.perf_counter() - start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        pred = self(batch["image"], self.eval_generator(batch))
        self._check_diverged(pred.probs, "the validation output holds")
        self.val_metrics.update(pred.probs, batch["mask"], batch.get("valid"))
        return {"prediction": pred}

    def _warm_up(self, image: Tensor, generator: torch.Generator) -> None:
        """The untimed passes: one-off costs (allocations, cuDNN autotuning, lazy
        initialisation) charged to no setting. Same shapes as the timed pass, at most one
        sampling step; the evaluation's own generator is not touched."""
        method = self.method
        try:
            self.method, _ = method.capped(steps=1)
        except (ValueError, TypeError):
            pass
        try:
            for _ in range(self._warmups_left):
                self(image, generator)
        finally:
            self.method, self._warmups_left = method, 0

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if self._warmups_left:
            self._warm_up(batch["image"], self.eval_generator(batch))
        self.timing = timing_device(batch["image"].device, self.timing_warmup)
        pred, seconds = self._timed_forward(batch["image"], self.eval_generator(batch))
        check_finite_batch(pred.probs, batch["name"])  # stop with the image's name, not NaN metrics
        rows = self.test_metrics.update(pred.probs, batch["mask"], batch.get("valid"),
                                        samples=pred.samples)
        n_samples = 1 if pred.samples is None else int(pred.samples.shape[1])
        for name, row in zip(batch["name"], rows, strict=True):
            # nfe: network evaluations per ensemble member; nfe_per_image: all members.
            self.test_rows.append({"name": name, **row, "nfe": pred.nfe, "n_samples": n_samples,
                                   "nfe_per_image": pred.nfe * n_samples,
                                   "seconds": seconds / len(rows)})
        return {"prediction": pred, "rows": rows}

    def on_test_epoch_start(self) -> None:
        self.test_rows = []
        self._warmups_left = int(self.timing_warmup)

    def _log_epoch_metrics(self, stage: str, metrics: VesselMetrics) -> dict[str, float]:
        values = metrics.compute()  # reduced over all ranks: identical everywhere
        metrics.reset()
        # Plain floats (one host read per epoch): Lightning puts them on this module's
        # device, which NCCL needs; some metrics compute on the CPU (topology, exact AUC).
        # sync_dist is a no-op numerically (values already agree) but keeps Lightning's
        # epoch-level reduction contract explicit.
        results = {k: float(v) for k, v in values.items()}
        self.log_dict({f"{stage}/{k}": v for k, v in results.items()}, sync_dist=True)
        return results

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        results = self._log_epoch_metrics("test", self.test_metrics)
        rows = [r for part in all_gather_object(self.test_rows) for r in part]
        self.test_rows = sorted(rows, key=lambda r: str(r["name"]))
        if self.test_rows:  # sampling cost, averaged over every image of every rank
            for key in ("nfe", "n_samples", "nfe_per_image"):
                results[key] = float(sum(r[key] for r in rows) / len(rows))
            # After the untimed warm-up (test_step); the median for what noise remains.
            results["seconds_per_image"] = float(statistics.median(r["seconds"] for r in rows))
        self.test_results = results

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """``model.optimizer`` over the network's parameters (only the network is trained),
        ``model.scheduler`` over the run's optimiser steps, stepped every step."""
        optimizer = build_optimizer(self.optimizer_factory, self.net, self.fused_optimizer)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = build_scheduler(self.scheduler_factory, optimizer, total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_callbacks(self) -> list[pl.Callback]:
        """Callbacks the model itself needs (added to the Trainer's): the weight EMA."""
        return [EMA(self.ema_decay)] if self.ema_decay else []

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segflow_version"] = VERSION  # a newer segflow's checkpoint is named as such
        if self.run_config is not None:
            checkpoint["segflow_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("segflow_config", self.run_config)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Any, map_location: Any = None,
                             **model_overrides: Any) -> SegModule:
        """Rebuild the module from a segflow checkpoint (or a run folder's best one).

        The network and method are not hyper-parameters (they are objects), so Lightning's
        generic loader cannot rebuild them; this one rebuilds them from the run config
        stored in the checkpoint (:func:`segflow.runs.checkpoints.load_model`). ``model_overrides``
        are dotted keys merged into the stored model config (e.g. ``threshold=0.4``).
        Returns the module in eval mode, on ``map_location`` (a device) when given.
        """
        from segflow.runs.checkpoints import load_model

        module, _, _ = load_model(checkpoint_path, "best", "ema", model_overrides)
        if map_location is not None and not callable(map_location) and not isinstance(
                map_location, dict):
            module.to(map_location)
        return module
