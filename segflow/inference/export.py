"""Export a trained run's network so it can leave Python: TorchScript or ONNX.

``python -m segflow.export run_dir=<run> format=torchscript|onnx`` (see
:mod:`segflow.export`) writes into ``<run>/export/<format>/``:

* ``model.pt`` (TorchScript, loads with ``torch.jit.load``, no segflow needed) or
  ``model.onnx`` (ONNX Runtime, viewers, deployment runtimes);
* ``export.json``: what the file computes and how to use it — its inputs and output, the
  run's preprocessing (``channels``, ``gray_from``, ``intensity``, ``mean``, ``std``), the
  mask threshold, the sizes it accepts and, for generative runs, the method and its sampler's
  settings (the exported file is the denoiser: one network evaluation; the sampling loop
  that calls it is described, not exported).

A supervised network is exported with its sigmoid: ``image (B, C, H, W) → probabilities
(B, 1, H, W)``. A denoiser keeps its own signature: ``(x_t (B, 1, H, W), t (B,), image
(B, C, H, W)) → (B, 1, H, W)`` (velocity, noise, x0 ... as ``method.prediction`` says).
Before anything is written the exported file is run beside the PyTorch network on a
second, different input and must agree to ``tolerance`` (1e-4): the largest difference is
recorded in ``export.json``. Networks whose traced graph holds the example's size (e.g.
MedSegDiff's FF-Parser maps) are recorded with a fixed ``input_size``: feed them tiles
of that size.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segflow.infra.errors import ConfigError

log = logging.getLogger("segflow.export")

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
ONNX_PACKAGES = ("onnx", "onnxruntime")


class Probabilities(nn.Module):
    """A supervised network with its sigmoid: image → foreground probability."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return torch.sigmoid(self.net(image).float())


class PadToMultiple(nn.Module):
    """Pads an image to multiples of ``multiple`` as :func:`segflow.inference.window.
    pad_to_multiple` does (reflection at the bottom and right, replication when a side is
    not longer than its pad), runs ``model`` and crops the output back: the exported
    supervised file takes any H, W. Scripted (not traced), so the padding follows the
    input's size."""

    def __init__(self, model: nn.Module, multiple: int):
        super().__init__()
        self.model, self.multiple = model, int(multiple)

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2], image.shape[-1]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph == 0 and pw == 0:
            return self.model(image)
        if ph < h and pw < w:
            padded = torch.nn.functional.pad(image, [0, pw, 0, ph], mode="reflect")
        else:
            padded = torch.nn.functional.pad(image, [0, pw, 0, ph], mode="replicate")
        return self.model(padded)[..., :h, :w]


def missing_onnx() -> list[str]:
    """The ONNX packages that cannot be imported here."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def check_format(fmt: str) -> str:
    """``fmt`` when it can be written here.

    Raises:
        ConfigError: an unknown format, or ``onnx`` without the onnx/onnxruntime packages.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not an export format; use format=torchscript or "
                          f"format=onnx")
    missing = missing_onnx() if fmt == "onnx" else []
    if missing:
        raise ConfigError(f"format=onnx needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}; install them with "
                          f"pip install 'segflow[export]' or use format=torchscript")
    return fmt


def is_denoiser(net: nn.Module) -> bool:
    from segflow.networks.base import Denoiser

    return isinstance(net, Denoiser)


def example_inputs(net: nn.Module, size: tuple[int, int], batch: int = 1,
                   seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the exported signature at ``size`` (H, W)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, net.in_channels, *size, generator=g)
    if not is_denoiser(net):
        return (image,)
    x_t = torch.randn(batch, net.out_channels, *size, generator=g)
    t = torch.rand(batch, generator=g)
    return (x_t, t, image)


def input_names(net: nn.Module) -> list[str]:
    return ["x_t", "t", "image"] if is_denoiser(net) else ["image"]


def exportable(net: nn.Module) -> nn.Module:
    """What is exported: the denoiser itself, or a supervised network with its sigmoid."""
    # In eval mode, the wrapper too: exporters restore the wrapper's mode afterwards, and a
    # wrapper left in training mode would put the network's BatchNorm back into it.
    return (net if is_denoiser(net) else Probabilities(net)).eval()


#: ``torch.jit`` is marked as superseded by ``torch.export``, which writes no TorchScript
#: files; tracing is how a network of plain Python modules becomes one.
_JIT_DEPRECATED = r".*torch\.jit\.\w+.* is deprecated"


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """An exported ``model.pt`` (``torch.jit.load`` does the same, with a deprecation notice)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _trace(model: nn.Module, inputs: tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
        # Shape arithmetic traced as constants: checked below at a second size instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(model, inputs, check_trace=False)


def _difference(run, model: nn.Module, inputs: tuple[Tensor, ...]) -> float:
    """Largest |exported − PyTorch| on ``inputs`` (inf when the exported file fails)."""
    with torch.no_grad():
        want = model(*inputs).float()
        try:
            got = run(inputs)
        except Exception:  # noqa: BLE001 - a traced size-dependent graph at another size
            return float("inf")
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max())


def _onnx_export(model: nn.Module, inputs: tuple[Tensor, ...], names: list[str], path: Path,
                 dynamic_size: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    dynamic = {n: ({0: "batch"} if n == "t" else axes) for n in names}
    dynamic["output"] = axes
    with warnings.catch_warnings():
        # The exporter's note that a strided slice stays unfolded: the graph is still exact
        # (checked against PyTorch below).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(model, inputs, str(path), input_names=names, output_names=["output"],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


def _onnx_runner(path: Path, names: list[str]):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: tuple[Tensor, ...]) -> Tensor:
        feeds = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0]).float()

    return run


def export_network(net: nn.Module, out_dir: str | Path, fmt: str = "torchscript",
                   size: int | tuple[int, int] = 64, tolerance: float = 1e-4
                   ) -> dict[str, Any]:
    """Write ``net`` (a SegNet with its sigmoid, or a Denoiser) as ``model.pt`` / ``model.onnx``
    in ``out_dir`` and check it against PyTorch.

    Args:
        size: the example's side(s), rounded up to ``net.size_multiple``.
        tolerance: the largest difference allowed between the file and PyTorch.

    Returns:
        the network part of ``export.json``: file, inputs, output, ``input_size`` (None when
        any multiple of ``size_multiple`` works, else the one (H, W) it takes), and the
        measured ``max_abs_difference``.

    Raises:
        ConfigError: the exported file does not reproduce the network (nothing is kept).
    """
    check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.eval().cpu()
    m = int(getattr(net, "size_multiple", 1))
    h, w = (size, size) if isinstance(size, int) else size
    h, w = -(-int(h) // m) * m, -(-int(w) // m) * m
    model, names = exportable(net), input_names(net)
    example = example_inputs(net, (h, w))
    other = example_inputs(net, (h + m, w + 2 * m), batch=2, seed=1)  # another size and batch
    same = example_inputs(net, (h, w), batch=2, seed=1)
    path = out_dir / FORMATS[fmt]
    if fmt == "torchscript":
        traced = _trace(model, example)
        dynamic = _difference(lambda x: traced(*x).float(), model, other) <= tolerance
        if dynamic and not is_denoiser(net) and m > 1:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
                traced = torch.jit.script(PadToMultiple(traced, m))
        traced.save(str(path))
        loaded = load_torchscript(path)

        def run(x):
            return loaded(*x).float()
    else:
        dynamic = True
        _onnx_export(model, example, names, path, dynamic_size=True)
        run = _onnx_runner(path, names)
        if _difference(run, model, other) > tolerance:  # a size-bound graph: export it so
            dynamic = False
            _onnx_export(model, example, names, path, dynamic_size=False)
            run = _onnx_runner(path, names)
    diff = _difference(run, model, other if dynamic else same)
    pads = fmt == "torchscript" and dynamic and not is_denoiser(net) and m > 1
    if pads:  # and at a size that is no multiple, against PyTorch's padded prediction
        from segflow.inference.window import pad_to_multiple

        odd = example_inputs(net, (h + m - 1, w + 1), batch=2, seed=2)
        padded, (oh, ow) = pad_to_multiple(odd[0], m)
        with torch.no_grad():
            want = model(padded).float()[..., :oh, :ow]
            diff = max(diff, float((run(odd) - want).abs().max()))
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ConfigError(f"the {fmt} export of {type(net).__name__} differs from the PyTorch "
                          f"network by {diff:.3g} (> {tolerance:g}); nothing was written, try "
                          f"the other format")
    shapes = {"x_t": ["batch", net.out_channels, "height", "width"], "t": ["batch"],
              "image": ["batch", net.in_channels, "height", "width"]}
    return {
        "format": fmt, "file": path.name, "network": type(net).__name__,
        "kind": "denoiser" if is_denoiser(net) else "segmentation",
        "inputs": {n: shapes[n] for n in names},
        "output": ["batch", net.out_channels, "height", "width"],
        "size_multiple": m, "input_size": None if dynamic else [h, w],
        "pads_itself": pads,
        "max_abs_difference": diff, "torch": torch.__version__,
    }


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


#: how the file is loaded (Python; torch.jit.load marks TorchScript as superseded and says
#: so on every call from torch 2.10 on: the file still loads, the notice is silenced)
LOAD = {"torchscript": "with warnings.catch_warnings(action='ignore', category=FutureWarning): "
                       "model = torch.jit.load('model.pt').eval()",
        "onnx": "session = onnxruntime.InferenceSession('model.onnx')"}

PAD = ("reflect-pad the image at the bottom and right to multiples of size_multiple "
       "(replicate instead when a side is not longer than its pad), crop the result back")

#: what a generative network outputs, by (method kind, prediction, parameterization)
_RAW = {
    ("flow", "x1", "linear"): ("x1", "the estimate x̂1 of the mask in [-1, 1]"),
    ("flow", "x1", "logit"): ("x1_logit", "a logit ℓ of the mask: x̂1 = tanh(ℓ / 2), "
                              "probability sigmoid(ℓ) = (x̂1 + 1) / 2"),
    ("flow", "velocity", "linear"): ("velocity", "the velocity v̂ of the flow at (x_t, t)"),
    ("diffusion", "eps", "linear"): ("eps", "the noise ε̂ in x_t"),
    ("diffusion", "x0", "linear"): ("x0", "the estimate x̂0 of the mask in [-1, 1]"),
    ("diffusion", "x0", "logit"): ("x0_logit", "a logit ℓ of the mask: x̂0 = tanh(ℓ / 2)"),
    ("diffusion", "v", "linear"): ("v", "v̂ = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 at x_t"),
}


def _flow_recipe(method: Any) -> dict[str, Any]:
    steps, solver = int(method.steps), str(method.solver)
    a = 1.0 - float(method.sigma_min)
    x1 = ("tanh(out / 2)" if method.parameterization == "logit" else "out")
    if method.prediction == "velocity":
        velocity = "v = out"
        x1 = f"x̂1 = (1 − {a:g}·t)·out + {a:g}·x"
    else:
        velocity = (f"with x̂1 = {x1} and c = 1 − {a:g}·t: v = x̂1 − {a:g}·x̂0, "
                    f"x̂0 = (x − t·x̂1)/c if c ≥ {method.X1_DELTA:g} else (x − t·x̂1)·c/"
                    f"{method.X1_DELTA:g}²")
        x1 = f"x̂1 = {x1}"
    update = {"euler": "x ← x + h·v(x, t)",
              "midpoint": "x ← x + h·v(x + h/2·v(x, t), t + h/2)",
              "heun": "x ← x + h/2·(v(x, t) + v(x + h·v(x, t), t + h))"}.get(solver)
    return {
        "start": f"x = {float(method.temperature):g} · standard Gaussian noise (B·n_samples, 1, H, W), "
                 "the n_samples members of one image adjacent",
        "network_call": "out = model(x, t (B·n_samples,) float32, image repeated n_samples times)",
        "velocity": velocity, "x1": x1, "sigma_min": float(method.sigma_min),
        "x1_delta": float(method.X1_DELTA), "solver": solver, "steps": steps,
        "times": [i / steps for i in range(steps)] if update else None,
        "update": (f"h = 1/{steps}; for each t in times: {update}" if update else
                   f"adaptive {solver} (atol {method.atol:g}, rtol {method.rtol:g}) from t = 0 to 1"),
        "result": "x̂1 of the last network call" if method.readout == "x1" else "x at t = 1",
    }


def _diffusion_recipe(method: Any) -> dict[str, Any]:
    grid = [int(g) for g in method.grid()]
    ab = [float(method.schedule.alpha_bar(g)) for g in grid]
    ab_next = [float(method.schedule.alpha_bar(g)) for g in grid[1:]] + [1.0]
    x0_eps = {"eps": "x̂0 = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ), ε̂ = out",
              "x0": "x̂0 = out, ε̂ = (x − sqrt(ᾱ)·x̂0)/sqrt(1 − ᾱ)",
              "v": "x̂0 = sqrt(ᾱ)·x − sqrt(1 − ᾱ)·out, ε̂ = sqrt(1 − ᾱ)·x + sqrt(ᾱ)·out"}
    x0 = x0_eps[method.prediction]
    if method.parameterization == "logit":
        x0 = "out ← tanh(out / 2), then " + x0
    if method.clip_x0:
        x0 += "; then x̂0 ← clamp(x̂0, −1, 1), ε̂ = (x − sqrt(ᾱ)·x̂0)/sqrt(1 − ᾱ)"
    update = {"ddim": ("x ← sqrt(ᾱ_next)·x̂0 + sqrt(1 − ᾱ_next − s²)·ε̂ + s·z, "
                       f"s² = {float(method.eta):g}²·(1 − ᾱ_next)/(1 − ᾱ)·(1 − ᾱ/ᾱ_next), "
                       "z standard Gaussian (none drawn when s = 0)"),
              "ddpm": "the DDPM posterior step from (x, x̂0) between ᾱ and ᾱ_next",
              "dpm_solver": "DPM-Solver++(2M) (Lu et al. 2022) in λ = log(sqrt(ᾱ/(1 − ᾱ)))"
                            + (", first order at the last step" if method.lower_order_final else "")}
    return {
        "start": f"x = {float(method.temperature):g} · standard Gaussian noise (B·n_samples, 1, H, W), "
                 "the n_samples members of one image adjacent",
        "network_call": "out = model(x, t = step / timesteps (B·n_samples,) float32, image "
                        "repeated n_samples times)",
        "sampler": str(method.sampler), "timesteps": int(method.timesteps),
        "steps": grid, "alpha_bar": ab, "alpha_bar_next": ab_next,
        "x0_eps": x0, "clip_x0": bool(method.clip_x0), "eta": float(method.eta), "update": "for each step, ᾱ and ᾱ_next of that step: " + update[method.sampler],
        "result": "x after the last step",
    }


def describe_method(module: Any, config: Any) -> dict[str, Any]:
    """The method part of ``export.json``: its class, stored settings, sampler's settings,
    what the exported file outputs (``raw_output``, ``output``) and, for a generative run,
    the sampling ``recipe`` that turns the denoiser's outputs into ``run.predict``'s
    probabilities (``null`` with ``recipe_note`` where the file alone cannot do it)."""
    method = module.method
    stored = _plain(config.model.get("method")) if config.get("model") is not None else None
    settings = {k: _plain(v) for k, v in method.sampling_settings().items()}
    out: dict[str, Any] = {"target": f"{type(method).__module__}.{type(method).__qualname__}",
                           "config": stored, "sampling": settings, "pad": PAD}
    if not is_denoiser(module.net):
        out.update(raw_output="probability",
                   output="foreground probability in [0, 1] (the sigmoid of the network's "
                          "logits is part of the file)",
                   pad="done by model.pt itself (TorchScript): " + PAD)
        return out
    from segflow.methods.diffusion import Diffusion
    from segflow.methods.flow import FlowMatching

    kind = ("flow" if isinstance(method, FlowMatching)
            else "diffusion" if isinstance(method, Diffusion) else None)
    key = (kind, str(getattr(method, "prediction", "")),
           str(getattr(method, "parameterization", "linear")))
    raw, text = _RAW.get(key, (str(getattr(method, "prediction", "velocity")),
                               f"the denoiser's {getattr(method, 'prediction', 'output')}"))
    out.update(raw_output=raw,
               output=f"one denoiser evaluation at (x_t, t, image): {text}; the sampler "
                      f"calls it once per step for each ensemble member, starting from "
                      f"Gaussian noise, and maps the final x in [-1, 1] to probability "
                      f"clamp((x + 1) / 2, 0, 1), the mean over the members")
    recipe, note = None, None
    if kind is None:
        note = f"{type(method).__name__} is not a segflow method: see its sample()"
    elif int(getattr(method, "tta", 1)) != 1:
        note = "test-time augmentation (tta) averages flipped passes: see segflow.methods.base"
    elif kind == "flow" and method.source_nfe():
        note = "the flow starts from a prior network's output, not in this file"
    else:
        recipe = _flow_recipe(method) if kind == "flow" else _diffusion_recipe(method)
        recipe.update(n_samples=int(method.n_samples),
                      probability="p = clamp((result + 1)/2, 0, 1) per member; probabilities = "
                                  "mean over the n_samples members")
    out.update(recipe=recipe, **({"recipe_note": note} if note else {}))
    return out


def export_run(run, out_dir: str | Path, fmt: str = "torchscript", size: int | None = None,
               tolerance: float = 1e-4) -> Path:
    """Export a loaded run (:class:`segflow.inference.api.Run`) to ``out_dir``; returns ``export.json``.

    Args:
        size: the example side (default: the run's training crop ``data.image_size``).
    """
    config = run.config
    if size is None:
        size = int(config.get("data", {}).get("image_size") or 64)
    net = run.module.net
    was = next(net.parameters()).device if any(True for _ in net.parameters()) else None
    try:
        manifest = export_network(net, out_dir, fmt, size, tolerance)
    finally:
        if was is not None:
            net.to(was)
    manifest.update(
        method=describe_method(run.module, config),
        preprocess=run.preprocess.as_dict(),
        threshold=run.threshold,
        checkpoint=str(run.checkpoint),
        model_name=config.model.get("name") if config.get("model") is not None else None,
        load=LOAD[fmt],
    )
    if manifest["kind"] == "segmentation":
        manifest["method"]["pad"] = ("done by the file itself: " + PAD if manifest["pads_itself"]
                                     else "by the caller: " + PAD)
    path = Path(out_dir) / "export.json"
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    log.info("wrote %s (%s, %s; largest difference to PyTorch %.2g%s) and %s",
             Path(out_dir) / manifest["file"], manifest["network"], manifest["kind"],
             manifest["max_abs_difference"],
             "" if manifest["input_size"] is None else
             f"; fixed input size {manifest['input_size']}", path)
    return path





def export_folder(output_dir: str | None, run_dir: str, fmt: str, overwrite: bool = False) -> Path:
    """Where an export goes (:func:`segflow.runs.layout.export_dir`), after checking that
    ``run_dir`` holds a checkpoint and ``fmt`` can be written here: a refusal makes no folder.

    Raises:
        ConfigError: ``run_dir`` is missing or holds no checkpoint, the format cannot be
            written here, or ``output_dir`` holds an earlier export (unless ``overwrite``:
            then only segflow's own files, the network, ``export.json`` and ``export.log``,
            are replaced) or is not writable.
    """
    from segflow.runs.checkpoints import checkpoint_path
    from segflow.runs.layout import export_dir

    if not Path(run_dir).exists():
        raise ConfigError(f"run_dir={run_dir} does not exist; pass a run folder "
                          f"(outputs/runs/<experiment>/<time>) or a .ckpt file")
    check_format(str(fmt))
    checkpoint_path(run_dir)  # a folder without a checkpoint: refused before any folder is made
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite={overwrite!r} is not valid: overwrite must be true or false")
    own = [FORMATS[str(fmt)], "export.json", "export.log"]
    return export_dir(output_dir, run_dir, fmt, own, overwrite)


def export_configured(cfg: Any, out: Path) -> Path:
    """``segflow.export``'s work: load ``cfg.run_dir`` and export its network into ``out``;
    returns ``export.json``."""
    from omegaconf import OmegaConf

    from segflow.inference.api import load_run

    model = cfg.get("model")
    overrides = OmegaConf.to_container(model, resolve=True) if model is not None else {}
    run = load_run(cfg.run_dir, which=cfg.which, weights=cfg.weights, device="cpu",
                   **{str(k): v for k, v in overrides.items()})
    return export_run(run, out, str(cfg.format), cfg.get("size"), float(cfg.tolerance))


__all__ = ["FORMATS", "check_format", "export_configured", "export_folder", "export_network", "export_run", "load_torchscript",
           "missing_onnx"]
