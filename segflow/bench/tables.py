"""Benchmark results → Markdown tables (printed and written) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segflow.infra.atomic import write_text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _note(row: dict[str, Any]) -> str:
    return row.get("error") or row.get("skipped") or ""


def train_md(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    mfu_head = f"MFU (vs {meta['peak_tflops']:g} TFLOP/s)" if meta.get("mfu_reported") else "MFU"
    header = ["model", "size", "batch", "precision", "channels_last", "compile", "fused AdamW",
              "EMA", "params (M)",
              "images/s", "step (ms)", "peak mem (MiB)", "fwd GFLOP/image",
              "train GFLOP/image", "achieved TFLOP/s", mfu_head, "note"]
    body = [[r["model"], r["image_size"], r["batch"], r["precision"], r["channels_last"],
             r["compile"], r.get("fused_adamw", False), r.get("ema", False), r["params_m"], r["images_per_s"], r["step_ms"], r["peak_mem_mib"],
             r["fwd_gflops_per_image"], r["train_gflops_per_image"], r["achieved_tflops"],
             f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else None, _note(r)]
            for r in rows]
    kind = next((r["peak_mem_kind"] for r in rows if r["peak_mem_kind"] != "n/a"), "n/a")
    mem = {"cuda_peak_allocated": "CUDA peak allocated memory during the timed steps",
           "cpu_max_rss_process": "process max RSS so far (CPU; cumulative over the run, "
                                  "so an upper bound for each row)"}.get(kind, "not available")
    return (md_table(header, body) + f"\n\nPeak memory: {mem}. FLOPs: "
            "torch.utils.flop_counter on one eager float32 step (matmul/conv/attention only); "
            "train = forward + backward. Synthetic in-memory batch, AdamW step included, "
            "no data loading.")


def sampling_md(rows: list[dict[str, Any]]) -> str:
    header = ["model", "method", "settings", "ensemble", "NFE", "s / image", "ms / NFE (whole call)",
              "note"]
    body = [[r["model"], r["method"],
             ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults",
             r["n_samples"], r["nfe"], r["seconds_per_image"], r["ms_per_nfe"], _note(r)]
            for r in rows]
    return md_table(header, body)


def ratio_md(ratios: dict[str, Any]) -> str:
    base, other, rows = ratios["base"], ratios["other"], ratios["rows"]
    parts = [f"**{other} / {base} wall-clock ratio** (seconds per image; > 1: {base} is faster)"]
    for n in sorted({r["n_samples"] for r in rows}):
        sub = [r for r in rows if r["n_samples"] == n]
        cols = list(dict.fromkeys((r[base], r[f"{base}_nfe"]) for r in sub))
        lines = list(dict.fromkeys((r[other], r[f"{other}_nfe"]) for r in sub))
        header = [f"ensemble {n}: {other} \\ {base}"] + [f"{c} (NFE {k})" for c, k in cols]
        body = []
        for label, nfe in lines:
            value = {(r[base], r[f"{base}_nfe"]): r["ratio"] for r in sub
                     if (r[other], r[f"{other}_nfe"]) == (label, nfe)}
            body.append([f"{label} (NFE {nfe})"] + [f"{value[c]:.3g}x" if c in value else None
                                                    for c in cols])
        parts.append(md_table(header, body))
    return "\n\n".join(parts)


def loader_md(rows: list[dict[str, Any]]) -> str:
    header = ["workers", "crops/s", "start-up (s)", "batches", "crop", "crops/batch",
              "source size", "pin_memory", "persistent", "note"]
    body = [[r["workers"], r["crops_per_s"], r["startup_s"], r["batches"], r["crop"],
             r["train_bs"] * r["num_samples_per_image"], r["source_size"], r["pin_memory"],
             r["persistent_workers"], _note(r)] for r in rows]
    return md_table(header, body)


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    load = meta.get("loadavg_start"), meta.get("loadavg_end")
    lines = [
        f"# segflow benchmark — {meta['mode']} mode, {meta['started']}",
        "",
        f"- command: `{meta['command']}`",
        f"- device: {meta['device_name']} (`{meta['device']}`); torch {meta['torch']}; "
        f"commit {meta.get('git_commit') or 'unknown'}",
        f"- host load average (1 min) at start / end: {_fmt(load[0])} / {_fmt(load[1])} "
        f"on {meta['cpu_count']} logical cores (numbers under load are slower than idle)",
        f"- total time: {meta['seconds']:.0f} s",
    ]
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    if result.get("train") is not None:
        lines += ["", "## Training throughput", "", train_md(result["train"], meta)]
    if result.get("sampling") is not None:
        lines += ["", "## Sampling cost vs NFE", "", sampling_md(result["sampling"])]
        if result.get("ratios"):
            lines += ["", ratio_md(result["ratios"])]
    if result.get("loader") is not None:
        lines += ["", "## Data loader", "", loader_md(result["loader"])]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    write_text(json_path, json.dumps(result, indent=2, default=str))  # atomic
    write_text(md_path, to_markdown(result))
    return json_path, md_path
