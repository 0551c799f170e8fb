"""``SegModule``: the only LightningModule. Drives any (method, network) pair."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from segflow.callbacks.ema import EMA
from segflow.inference import predict_whole
from segflow.methods.base import Method, Prediction
from segflow.metrics import VesselMetrics

EVAL_SEED = 20240601  # base seed of the validation/test sampling noise (see eval_generator)


class SegModule(pl.LightningModule):
    """Optimisation, metrics and logging around a method and a network.

    Training calls ``method.loss(net, image, mask, valid)``; validation and test call
    ``method.predict`` on whole images (padded to the network's multiple) and update
    :class:`~segflow.metrics.VesselMetrics`. It never asks which family the method is.

    Args:
        net: the network (``SegNet`` or ``Denoiser``; the method checks it).
        method: the training objective and sampler.
        name: the model's name (run folders, reports).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norm parameters).
        betas: AdamW betas.
        warmup: linear warm-up length: a fraction of all steps (< 1) or a step count (≥ 1).
        scheduler: ``cosine`` (decay to ``min_lr_ratio`` · lr after warm-up) or ``constant``.
        min_lr_ratio: final learning rate as a fraction of the peak.
        threshold: probability threshold of the binary metrics.
        log_image_enabled: log image grids of validation images to TensorBoard.
        log_image_names: the validation images to log (file names or stems); empty = the
            first ``num_log_images``.
        num_log_images: how many to log when none are named.
        ema_decay: keep an exponential moving average of the weights with this decay
            (e.g. 0.9999 for generative models); validation, test and checkpoints use
            the averaged weights. None disables it.
    """

    def __init__(self, net: nn.Module, method: Method, name: str = "model",
                 learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), warmup: float = 0.05,
                 scheduler: str = "cosine", min_lr_ratio: float = 0.01, threshold: float = 0.5,
                 log_image_enabled: bool = True, log_image_names: list[str] | tuple = (),
                 num_log_images: int = 4, ema_decay: float | None = None):
        super().__init__()
        method.check_net(net)
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"model.scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        self.net, self.method, self.name = net, method, name
        # Plain Python types only in hyper-parameters (checkpoints load with weights_only=True).
        betas = (float(betas[0]), float(betas[1]))
        log_image_names = [str(n) for n in (log_image_names or [])]
        self.save_hyperparameters(ignore=["net", "method"])
        self.log_image_enabled = log_image_enabled
        self.log_image_names = log_image_names
        self.num_log_images = num_log_images
        self.ema_decay = ema_decay
        self.val_metrics = VesselMetrics(threshold)
        self.test_metrics = VesselMetrics(threshold)
        self.test_results: dict[str, float] = {}
        # The resolved run config, stored in every checkpoint so that one file is enough
        # to rebuild the model (see segflow.config.load_module). Set by the entry point.
        self.run_config: dict[str, Any] | None = None

    # -- steps --------------------------------------------------------------------------
    def forward(self, image: Tensor) -> Prediction:
        """Segment whole images (B, C, H, W) of any size with the method's current settings."""
        return predict_whole(self.method, self.net, image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.method.loss(self.net, batch["image"], batch["mask"], batch.get("valid"))
        bs = batch["image"].shape[0]
        self.log("train/loss_step", out["loss"], on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=bs)
        return out["loss"]

    @staticmethod
    def eval_generator(batch: dict[str, Any]) -> torch.Generator:
        """Sampling noise for an evaluation batch, seeded by its first image's index in the
        split: generative methods draw the same noise for the same image at every
        validation, on any number of ranks, so their metrics move only with the weights.
        One-pass methods ignore it."""
        image = batch["image"]
        index = batch.get("index")
        seed = int(index.reshape(-1)[0]) if torch.is_tensor(index) and index.numel() else 0
        return torch.Generator(device=image.device).manual_seed(EVAL_SEED + seed)

    def _eval_step(self, batch: dict[str, Any], metrics: VesselMetrics) -> dict[str, Any]:
        pred = predict_whole(self.method, self.net, batch["image"], generator=self.eval_generator(batch))
        metrics.update(pred.probs, batch["mask"], batch.get("valid"))
        return {"prediction": pred}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.test_metrics)

    def _log_epoch_metrics(self, stage: str, metrics: VesselMetrics) -> dict[str, float]:
        values = metrics.compute()  # reduced over all ranks: identical everywhere
        metrics.reset()
        # sync_dist is a no-op numerically (values already agree) but keeps Lightning's
        # epoch-level reduction contract explicit.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_epoch_metrics("test", self.test_metrics)

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.net.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate, betas=tuple(hp.betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup * total) if hp.warmup < 1 else int(hp.warmup)

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if hp.scheduler == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_callbacks(self) -> list[pl.Callback]:
        """Callbacks the model itself needs (added to the Trainer's): the weight EMA."""
        return [EMA(self.ema_decay)] if self.ema_decay else []

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["segflow_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("segflow_config", self.run_config)
