"""Pictures that compare runs, and one page that holds a comparison: ``report.html``.

Called by ``segflow.report`` (and usable by any comparison) with the runs and the tables
it wrote; draws with matplotlib into the report folder:

* ``curves.png`` — training curves of every run: the training loss and the validation
  Dice against optimiser step and against wall-clock minutes (from each run's TensorBoard
  events, else its ``csv/metrics.csv``);
* ``panel_<image>.png`` — for a few test images (given by name, else the best, median and
  worst by the first run's Dice), the image and its ground truth, then one row per run:
  prediction, error map (true positive white, false positive red, false negative blue)
  and, for ensembles, the per-pixel uncertainty. The predictions are made with each run's
  own model and preprocessing (:func:`segflow.load_run`; a generative run at its stored
  sampling settings, seed 0);
* ``report.html`` — the tables and every figure, images by relative path, no script and
  nothing fetched from the network: the folder opens in any browser, anywhere.

Runs get short labels (:func:`short_labels`): the model name, plus what tells runs of one
model apart (the overrides that differ, else the run folder's name).
"""

from __future__ import annotations

import csv
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segflow.runs.layout import RunFolder
from segflow.runs.records import read_run_config, run_model_name
from segflow.runs.results import save_figure

log = logging.getLogger("segflow.report")

#: The scalars drawn as training curves: (title, candidate tags, first found wins).
CURVES = (("training loss", ("train/loss_step", "train/loss")),
          ("validation Dice", ("val/dice",)))


# -- labels --------------------------------------------------------------------------------
def short_labels(runs: Sequence[Path], overrides: dict[Path, dict[str, str]] | None = None
                 ) -> dict[Path, str]:
    """A short, unique label per run: ``unet``, or ``unet lr=0.01`` / ``unet 2026-01-01_12-00``
    when several runs share a model."""
    models = {run: _model_name(run) for run in runs}
    labels: dict[Path, str] = {}
    for run in runs:
        same = [r for r in runs if models[r] == models[run]]
        label = models[run]
        if len(same) > 1:
            ov = (overrides or {}).get(run, {})
            differ = [k for k in sorted(ov) if k not in ("model", "data") and
                      len({(overrides or {}).get(r, {}).get(k) for r in same}) > 1]
            extra = " ".join(f"{k.rsplit('.', 1)[-1]}={ov[k]}" for k in differ[:2])
            label = f"{label} {extra or run.name}"
        labels[run] = label
    seen: dict[str, int] = {}
    for run in runs:  # still equal (same overrides, same folder name): number them
        n = seen[labels[run]] = seen.get(labels[run], 0) + 1
        if n > 1:
            labels[run] = f"{labels[run]} #{n}"
    return labels


def _model_name(run: Path) -> str:
    try:
        return str(run_model_name(run) or run.name)
    except (OSError, ValueError):
        return run.name


# -- training curves -----------------------------------------------------------------------
def read_scalars(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """``{tag: [(step, wall-clock seconds since the first point, value), ...]}`` of a run,
    from its TensorBoard events (``<run>/tensorboard``) or ``<run>/csv/metrics.csv``."""
    tb = RunFolder(run).tensorboard
    if tb.is_dir() and any(tb.rglob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        out: dict[str, list[tuple[int, float, float]]] = {}
        for folder in sorted({p.parent for p in tb.rglob("events.out.tfevents.*")}):
            acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                out.setdefault(tag, []).extend((e.step, e.wall_time, e.value)
                                               for e in acc.Scalars(tag))
        return _relative_time(out)
    table = RunFolder(run).csv_metrics
    if table.is_file():
        out = {}
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    # CSVLogger has no wall-clock: steps stand in (noted on the axis).
                    out.setdefault(key, []).append((int(float(row.get("step") or 0)),
                                                    float("nan"), float(value)))
        return out
    return {}


def _relative_time(scalars: dict[str, list[tuple[int, float, float]]]
                   ) -> dict[str, list[tuple[int, float, float]]]:
    starts = [p[1] for pts in scalars.values() for p in pts]
    t0 = min(starts) if starts else 0.0
    return {tag: sorted((s, w - t0, v) for s, w, v in pts) for tag, pts in scalars.items()}


def plot_curves(path: Path, runs: Sequence[Path], labels: dict[Path, str]) -> Path | None:
    """``curves.png``: loss and validation Dice against step and wall-clock minutes; None
    when no run logged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {run: read_scalars(run) for run in runs}
    if not any(tag in s for s in data.values() for _, tags in CURVES for tag in tags):
        return None
    fig, axes = plt.subplots(len(CURVES), 2, figsize=(11, 3.4 * len(CURVES)), squeeze=False)
    for row, (title, tags) in enumerate(CURVES):
        for run in runs:
            tag = next((t for t in tags if t in data[run]), None)
            if tag is None:
                continue
            steps, walls, values = zip(*data[run][tag], strict=True)
            style = {"marker": "o" if len(values) < 20 else None, "markersize": 3}
            axes[row][0].plot(steps, values, label=labels[run], **style)
            if not all(np.isnan(walls)):
                axes[row][1].plot(np.asarray(walls) / 60, values, label=labels[run], **style)
        axes[row][0].set(xlabel="optimiser step", ylabel=title, title=f"{title} vs step")
        axes[row][1].set(xlabel="wall-clock (minutes)", ylabel=title,
                         title=f"{title} vs wall-clock")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -- qualitative panel -----------------------------------------------------------------------
def error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: true positive white, false positive red, false negative blue,
    true negative black."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    out = np.zeros((*pred.shape, 3), np.uint8)
    out[pred & truth] = (255, 255, 255)
    out[pred & ~truth] = (255, 0, 0)
    out[~pred & truth] = (0, 0, 255)
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def labelled_test_images(run_config: Any) -> tuple[dict[str, Path], dict[str, Path]]:
    """The test images and labels of a run's data (stems → files; empty when the run has no
    test folder with labels)."""
    from hydra.utils import instantiate

    from segflow.data.io import list_images

    datamodule = instantiate(run_config.data)
    datamodule.prepare_data()  # a synthetic dataset is (re)made where the run made it
    folder = Path(datamodule.split_dirs["test"])
    images, labels = folder / datamodule.image_dir, folder / datamodule.label_dir
    if not images.is_dir() or not labels.is_dir():
        return {}, {}
    found, truth = list_images(images), list_images(labels)
    return {s: p for s, p in found.items() if s in truth}, truth


def roles(scores: dict[str, float], stems: Sequence[str]) -> dict[str, str]:
    """``best`` / ``median`` / ``worst`` (by ``scores``) of the chosen ``stems``; a stem
    chosen by name gets no role unless it is one of them."""
    order = sorted(scores, key=lambda s: (-scores[s], s))
    if not order:
        return {}
    named = {order[0]: "best", order[-1]: "worst"}
    if len(order) > 2:
        named.setdefault(order[len(order) // 2], "median")
    return {s: named[s] for s in stems if s in named}


def choose(scores: dict[str, float], names: Sequence[str] | None, n: int = 3) -> list[str]:
    """``names`` (file names or stems) when given, else the best, median and worst by
    score (ties by name)."""
    if names:
        return [Path(str(name)).stem for name in names]
    order = sorted(scores, key=lambda s: (-scores[s], s))
    if len(order) <= n:
        return order
    picks = [order[0], order[len(order) // 2], order[-1]] if n == 3 else \
        [order[round(i * (len(order) - 1) / max(1, n - 1))] for i in range(n)]
    return list(dict.fromkeys(picks))


def qualitative_panels(out: Path, runs: Sequence[Path], labels: dict[Path, str],
                       names: Sequence[str] | None = None, n: int = 3, device: str = "cpu"
                       ) -> list[Path]:
    """``panel_<stem>.png`` per chosen test image (see the module docstring); the images
    come from the first run's test split."""
    import segflow
    from segflow.data.io import read_mask

    print(f"report: loading {len(runs)} models for the qualitative panels", flush=True)
    loaded = [segflow.load_run(run, device=device) for run in runs]
    images, truths = labelled_test_images(loaded[0].config)
    if not images:
        log.warning("no qualitative panel: %s has no test folder with labels", runs[0])
        return []
    wanted = None
    if names:
        wanted = [Path(str(x)).stem for x in names]
        missing = [s for s in wanted if s not in images]
        if missing:
            log.warning("no test image named %s (there are %s)", ", ".join(missing),
                        ", ".join(sorted(images)[:5]))
        wanted = [s for s in wanted if s in images]
    print(f"report: ranking {len(images)} test images by {labels[runs[0]]}'s Dice", flush=True)
    first = loaded[0].predict(list(images.values()))
    masks = {stem: read_mask(truths[stem]) > 0 for stem in images}
    scores = {stem: dice(seg.mask, masks[stem]) for stem, seg in zip(images, first, strict=True)}
    stems = choose(scores, wanted) if wanted is None else wanted
    if not stems:
        return []
    # One image per call (seed 0 each): a panel does not depend on which others are drawn.
    preds = {}
    for i, (run, run_model) in enumerate(zip(runs, loaded, strict=True), start=1):
        print(f"report: predicting {len(stems)} panel images with {labels[run]} ({i}/{len(runs)})",
              flush=True)
        preds[run] = run_model.predict([images[s] for s in stems], batch_size=1)
    role = roles(scores, stems)
    return [_draw_panel(out / f"panel_{stem}.png", stem, images[stem], masks[stem],
                        [(labels[run], preds[run][i]) for run in runs],
                        f"{role[stem]} of {len(images)} by {labels[runs[0]]}'s Dice" if stem in role
                        else None)
            for i, stem in enumerate(stems)]


def _draw_panel(path: Path, stem: str, image_path: Path, truth: np.ndarray,
                rows: list[tuple[str, Any]], role: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segflow.data.io import read_image

    image = read_image(image_path, 1)[..., 0]
    uncertain = any(seg.uncertainty is not None for _, seg in rows)
    cols = 3 if uncertain else 2
    # One scale for every run's uncertainty (comparable), stretched to the largest spread.
    top = max([float(seg.uncertainty.max()) for _, seg in rows if seg.uncertainty is not None]
              + [1e-6])
    h, w = truth.shape
    cell_w, cell_h = 2.6 * w / max(h, w), 2.6 * h / max(h, w)
    fig, axes = plt.subplots(len(rows) + 1, cols, squeeze=False,
                             figsize=(cols * cell_w + 0.8, (len(rows) + 1) * (cell_h + 0.3)))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    axes[0][0].imshow(image, cmap="gray")
    axes[0][0].set_title(stem, fontsize=9)
    if role:
        fig.suptitle(f"{stem}: {role}", fontsize=10)
    axes[0][1].imshow(truth, cmap="gray", vmin=0, vmax=1)
    axes[0][1].set_title("ground truth", fontsize=9)
    for r, (label, seg) in enumerate(rows, start=1):
        axes[r][0].imshow(seg.probabilities, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(label, fontsize=9)
        axes[r][0].set_title(f"prediction (Dice {dice(seg.mask, truth):.3f})", fontsize=8)
        axes[r][1].imshow(error_map(seg.mask, truth))
        axes[r][1].set_title("TP white · FP red · FN blue", fontsize=8)
        if uncertain and seg.uncertainty is not None:
            shown = axes[r][2].imshow(seg.uncertainty, cmap="magma", vmin=0, vmax=top)
            axes[r][2].set_title("uncertainty (std over members)", fontsize=8)
            bar = fig.colorbar(shown, ax=axes[r][2], fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


# -- report.html ---------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns)
                   + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}figure{margin:1em 0}
figcaption{font-size:13px;color:#555}"""


def write_html(path: Path, title: str, intro: str,
               tables: Sequence[tuple[str, Sequence[dict[str, Any]], Sequence[str]]],
               figures: Sequence[tuple[str, Path]]) -> Path:
    """One page: ``tables`` as (heading, rows, columns), ``figures`` as (caption, file in
    the page's folder, linked by its relative path). No script, nothing fetched."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for heading, rows, columns in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{html_table(rows, columns)}")
    if figures:
        parts.append("<h2>Figures</h2>")
    for caption, fig in figures:
        rel = Path(fig).resolve().relative_to(path.parent.resolve()).as_posix()
        parts.append(f"<figure><img src=\"{html.escape(rel)}\" alt=\"{html.escape(caption)}\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _has_uncertainty(run: Path) -> bool:
    """Whether the run's model samples an ensemble (more than one member: an uncertainty)."""
    cfg = read_run_config(run)
    method = (cfg.get("model") or {}).get("method") or {} if cfg is not None else {}
    try:
        return int(method.get("n_samples", 1) or 1) > 1
    except (TypeError, ValueError):  # an interpolation: a caption only
        return False


def write_pictures(out: Path, runs: Sequence[Path], labels: dict[Path, str],
                   names: Sequence[str] | None = None, device: str = "cpu") -> list[tuple[str, Path]]:
    """The training curves and qualitative panels of ``runs`` into ``out``; returns
    (caption, file) of each figure written. A run whose model cannot be loaded (no
    checkpoint) is left out of the panel, with a warning."""
    figures: list[tuple[str, Path]] = []
    print(f"report: training curves of {len(runs)} runs", flush=True)
    curves = plot_curves(out / "curves.png", runs, labels)
    if curves is not None:
        figures.append(("training curves: loss and validation Dice against step and "
                        "wall-clock", curves))
    from segflow.infra.errors import SegflowError

    usable = []
    for run in runs:
        if any(RunFolder(run).checkpoints.glob("*.ckpt")):
            usable.append(run)
        else:
            log.warning("%s has no checkpoint: left out of the qualitative panel", run)
    try:
        panels = qualitative_panels(out, usable, labels, names, device=device) if usable else []
    except SegflowError as exc:
        log.warning("no qualitative panel: %s", exc)
        panels = []
    uncertain = panels and any(_has_uncertainty(run) for run in usable)
    for panel in panels:
        figures.append((f"test image {panel.stem.removeprefix('panel_')}: prediction and error "
                        f"(TP white, FP red, FN blue){' and uncertainty' if uncertain else ''} "
                        f"per run", panel))
    return figures


def write_report_page(out: Path, runs: Sequence[Path], labels: dict[Path, str],
                      tables: Sequence[tuple[str, Sequence[dict[str, Any]], Sequence[str]]],
                      figures: Sequence[tuple[str, Path]] = (), names: Sequence[str] | None = None,
                      device: str = "cpu", title: str = "segflow report") -> Path:
    """Curves, panels (:func:`write_pictures`) and ``out/report.html`` with ``tables``, the
    given ``figures`` (e.g. ``metrics.png``) and the new ones; returns the page. A ``run``
    column holding run folders shows the short labels instead."""
    by_dir = {str(run): label for run, label in labels.items()}
    shown = [(heading, [{**r, "run": by_dir.get(str(r.get("run_dir")), r.get("run"))}
                        for r in rows], columns) for heading, rows, columns in tables]
    pictures = write_pictures(out, runs, labels, names, device)
    key = "; ".join(f"{label}: {run}" for run, label in labels.items())
    return write_html(out / "report.html", title, f"{len(runs)} runs ({key}).", shown,
                      [*[(c, Path(f)) for c, f in figures if Path(f).is_file()], *pictures])
