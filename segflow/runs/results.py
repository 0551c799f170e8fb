"""Writing results: prediction PNGs, CSV / Markdown tables and plots (JSON:
:func:`segflow.infra.atomic.write_json`).

Shared by evaluation, prediction and reports (no Lightning, no Hydra here).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.infra.atomic import atomic_open
from segflow.infra.atomic import write_bytes as atomic_write_bytes
from segflow.runs.layout import prediction_files

if TYPE_CHECKING:  # torch is not needed to write tables (segflow.report stays light)
    from torch import Tensor

#: Metric columns shown first in tables (the rest follow in order of appearance).
TABLE_METRICS = ("dice", "dice_per_image", "iou", "cldice", "cldice_per_image", "betti0_error",
                 "betti1_error", "hd95", "auc", "ece", "sensitivity", "specificity",
                 "precision", "accuracy", "nfe", "nfe_per_image", "seconds_per_image",
                 "betti0_std", "betti1_std", "cldice_std", "mean_uncertainty")


def to_uint8(x: Tensor | np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(1, H, W) or (H, W) values in [0, 1/scale] → uint8 (H, W) image (0..255)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, np.float32)
    arr = arr.reshape(arr.shape[-2:])
    return np.clip(np.round(arr * scale * 255.0), 0, 255).astype(np.uint8)


def save_prediction_pngs(folder: Path, stem: str, probs: Tensor, uncertainty: Tensor | None,
                         threshold: float = 0.5) -> list[Path]:
    """Write ``<stem>_prob.png`` (probability × 255), ``<stem>_mask.png`` (0 / 255) and,
    for ensembles, ``<stem>_uncertainty.png`` (per-pixel std × 2 × 255: the std of
    members in [0, 1] is at most 0.5, so the full range is used and maps are comparable
    across images).

    Args:
        probs, uncertainty: (1, H, W) or (H, W).

    Returns:
        the files written.
    """
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    named = prediction_files(folder, stem)
    files = [named["prob"], named["mask"]]
    arrays = [to_uint8(probs), to_uint8((probs > threshold).float())]
    if uncertainty is not None:
        files.append(named["uncertainty"])
        arrays.append(to_uint8(uncertainty, scale=2.0))
    for path, arr in zip(files, arrays, strict=True):  # atomic: never a half-written PNG
        ok, buf = cv2.imencode(".png", arr)
        if not ok:  # pragma: no cover - uint8 PNG always encodes
            raise OSError(f"could not encode {path}")
        atomic_write_bytes(path, buf.tobytes())
    return files


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def columns_of(rows: Sequence[dict[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Column order: ``first`` (those present), then every other key in order of appearance."""
    seen: dict[str, None] = {}
    for key in first:
        if any(key in r for r in rows):
            seen[key] = None
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def csv_text(value: Any) -> Any:
    """A cell as UTF-8 can hold it: a file name that is not UTF-8 (``$'\\xff'a.png``, read
    by Python with surrogate escapes) is written with its bytes escaped (``\\xffa.png``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Rows of dicts → CSV in UTF-8 (missing cells empty; see :func:`csv_text`)."""
    columns = list(columns or columns_of(rows))
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_text(row.get(k, "")) for k in columns})
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    """CSV → rows, numbers parsed back to int or float (other cells stay strings)."""
    def parse(v: str) -> Any:
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with Path(path).open(newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts → a GitHub Markdown table (floats with 4 decimals)."""
    columns = list(columns or columns_of(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def line_groups(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """For a plot over a grid of settings: the keys that label the lines — every key that
    varies, except the one with the most distinct values (the swept one, usually steps,
    which the x axis already shows through the NFE)."""
    varying = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]
    if not varying:
        return []
    swept = max(varying, key=lambda k: len({str(r.get(k)) for r in rows}))
    return [k for k in varying if k != swept]


def plot_lines(path: Path, rows: Sequence[dict[str, Any]], x: str, ys: Iterable[str],
               group_by: Sequence[str] = (), log_x: bool = False, title: str = "") -> Path:
    """One panel per y metric: y against x, one line per distinct ``group_by`` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = [y for y in ys if any(isinstance(r.get(y), (int, float)) for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(ys)), figsize=(4.5 * max(1, len(ys)), 3.8),
                             squeeze=False, layout="constrained")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{k}={r.get(k)}" for k in group_by) or "all"
        groups.setdefault(label, []).append(r)
    for ax, y in zip(axes[0], ys, strict=False):
        for label, members in groups.items():
            pts = sorted((float(r[x]), float(r[y])) for r in members
                         if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    if len(groups) > 1:  # below the panels, so it never hides a curve
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


#: the formats every figure is written in, beside each other (PNG for pages, SVG and PDF
#: for papers: vector, text kept as text)
FIGURE_FORMATS = (".png", ".svg", ".pdf")


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as ``path`` (PNG) and beside it as SVG and PDF; returns ``path``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    # text stays text in the vector files (editable, searchable; TrueType in the PDF)
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for suffix in FIGURE_FORMATS:
            fig.savefig(path.with_suffix(suffix), dpi=dpi)
    plt.close(fig)
    return path


def zoomed_limits(values: Sequence[float], floor: float = 0.0, ceiling: float = 1.0
                  ) -> tuple[float, float]:
    """Axis limits around ``values`` (their range plus a margin, at least 0.02 wide) inside
    [floor, ceiling], so that differences of a few hundredths show."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return floor, ceiling
    lo, hi = min(finite), max(finite)
    margin = max(0.15 * (hi - lo), 0.01)
    return max(floor, lo - margin), min(ceiling, hi + margin)


def plot_bars(path: Path, labels: Sequence[str], values: dict[str, Sequence[float]],
              title: str = "", intervals: dict[str, Sequence[tuple[float, float] | None]] | None = None
              ) -> Path:
    """A dot plot: one row per label, one panel per metric in ``values``, each panel's axis
    zoomed to its values (printed beside the dots), with ``intervals`` (low, high) as bars
    where given; PNG, SVG and PDF (:func:`save_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(labels), max(1, len(values))
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k + 1.6, 0.9 + 0.32 * n), squeeze=False,
                             sharey=True, layout="constrained")
    y = np.arange(n)
    for ax, (metric, vals) in zip(axes[0], values.items(), strict=False):
        vals = [float(v) for v in vals]
        lows = highs = None
        if intervals and intervals.get(metric):
            iv = intervals[metric]
            lows = [v - (i[0] if i else v) for v, i in zip(vals, iv, strict=True)]
            highs = [(i[1] if i else v) - v for v, i in zip(vals, iv, strict=True)]
            ax.errorbar(vals, y, xerr=[lows, highs], fmt="none", ecolor="0.5", capsize=2)
        ax.plot(vals, y, "o", color="C0", markersize=5)
        for yi, v in zip(y, vals, strict=True):
            ax.annotate(f"{v:.3f}", (v, yi), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7)
        spread = vals + ([v + h for v, h in zip(vals, highs, strict=True)] if highs else []) + \
            ([v - lo for v, lo in zip(vals, lows, strict=True)] if lows else [])
        ax.set_xlim(*zoomed_limits(spread))
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(labels, fontsize=7)
    axes[0][0].set_ylim(n - 0.5, -0.7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
