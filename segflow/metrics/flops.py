"""Cost in counted floating-point operations: per network pass and per segmented image.

One NFE (network function evaluation) is not one unit of cost: networks differ in FLOPs per
pass, so budgets compared "at the same NFE" can differ severalfold in compute. The count
here is PyTorch's own (:class:`torch.utils.flop_counter.FlopCounterMode`), which counts the
matrix products of a forward pass — convolutions (transposed too), ``mm`` / ``addmm`` /
``bmm`` (``einsum`` and ``@`` included), attention — at **2 FLOPs per multiply-add**: a
convolution without or with bias counts 2 · C_in · C_out · k_h · k_w · H_out · W_out per
image (for ``groups = g``, divided by g; a transposed one by its input size). Biases,
activations, normalisation, pooling, softmax and other element-wise work are **not**
counted; for the convolutional networks compared they are a small fraction of the total.

``scaled_dot_product_attention`` is counted under its plain-math kernel (two batched
products, 4 · N² · d per head): the fused CPU kernel is not known to the counter and would
count 0, so the count would depend on the device and backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def _example(spec: Tensor | Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(spec, Tensor):
        return spec.to(device)
    shape = tuple(int(s) for s in spec)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"an input shape needs positive sizes, got {tuple(spec)}")
    return torch.zeros(shape, device=device, dtype=dtype)


def forward_flops(module: nn.Module, *inputs: Tensor | Sequence[int], per_image: bool = True
                  ) -> float:
    """Counted FLOPs of one forward pass of ``module``.

    Args:
        module: the network (run in eval mode under ``torch.no_grad``, attention on the
            math kernel; its train/eval mode is restored afterwards).
        inputs: the forward's positional arguments, each a tensor or a shape (a float32
            zero tensor of that shape on the module's device), e.g. ``(1, 1, 128, 128)``
            for a segmentation net, or ``(1, 1, 128, 128), (1,), (1, 1, 128, 128)`` for a
            denoiser's ``(x_t, t, image)``. The first dimension of the first is the batch.
        per_image: divide by the batch size (FLOPs per image).

    Raises:
        ValueError: no inputs, or a shape with a non-positive size.
    """
    if not inputs:
        raise ValueError("forward_flops needs the forward's inputs (tensors or shapes)")
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    args = [_example(spec, device, dtype) for spec in inputs]
    batch = args[0].shape[0] if args[0].ndim else 1
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(*args)
    finally:
        module.train(was_training)
    total = float(counter.get_total_flops())
    return total / batch if per_image else total


def image_flops(pass_flops: float, nfe: float = 1, tta: int = 1, tiles: int = 1,
                prior_flops: float = 0.0, prior_passes: int = 1) -> float:
    """FLOPs to segment one image: the network's passes times their FLOPs, plus a prior's.

        FLOPs = pass_flops · nfe · tta · tiles + prior_flops · prior_passes · tiles

    Args:
        pass_flops: one pass of the network on one tile or whole image
            (:func:`forward_flops` at that size).
        nfe: the network's passes per view and tile: steps × ensemble members for a
            sampler with one pass per step (segflow's ``nfe_per_image`` already multiplies
            the TTA views and adds the prior's pass: do not pass it here).
        tta: test-time-augmentation views (each runs every pass again).
        tiles: sliding-window tiles per image (1 for a whole-image pass).
        prior_flops: one pass of a prior network (e.g. the supervised prior a refinement
            flow starts from), 0 for none.
        prior_passes: the prior's passes per tile: 1 when it runs once per image and is
            shared by every step and ensemble member; ``tta`` when each view re-runs it.

    Raises:
        ValueError: a negative count or FLOPs.
    """
    for name, value in (("pass_flops", pass_flops), ("nfe", nfe), ("tta", tta), ("tiles", tiles),
                        ("prior_flops", prior_flops), ("prior_passes", prior_passes)):
        if not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value}")
    return float(pass_flops * nfe * tta * tiles + prior_flops * prior_passes * tiles)


def call_flops(fn, *args, **kwargs) -> float:
    """Counted FLOPs of any call (a whole prediction: every step, ensemble member, TTA view,
    sliding-window tile and prior pass it makes), attention on the math kernel, no gradients."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return float(counter.get_total_flops())


def training_step_flops(method: nn.Module, net: nn.Module, batch: int, channels: int,
                        size: int) -> float:
    """Counted FLOPs of one optimiser step's forward and backward (``method.loss`` on a
    batch of ``batch`` crops of ``size`` px, a prior's forward included; the optimiser's
    update is element-wise and not counted). It runs on copies: the given modules' weights,
    batch-norm statistics and gradients are untouched."""
    import copy

    method, net = copy.deepcopy(method), copy.deepcopy(net)
    param = next(net.parameters())
    image = torch.zeros(batch, channels, size, size, device=param.device, dtype=param.dtype)
    mask = torch.zeros(batch, 1, size, size, device=param.device, dtype=param.dtype)
    mask[..., size // 4: size // 2, :] = 1
    net.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        method.loss(net, image, mask, None)["loss"].backward()
    return float(counter.get_total_flops())
