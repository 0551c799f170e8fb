"""The steps of the prepared GPU check (``python -m segflow.bench.gpu_check``,
``make gpu-check``) and its report.

Runs, each under its own time limit (about 8 minutes in all on one GPU):

1. ``bench``      — every model preset at full size in bf16-mixed and 32-true, without and
   with the weight EMA (``python -m segflow.bench bench=full models=all``: step time,
   images/s, MFU), and sampling cost vs NFE;
2. ``ddp``        — ``trainer=ddp`` on every visible GPU, a short synthetic run;
3. ``drive_csnet_gpu`` — the DRIVE experiment, shortened (DRIVE is prepared from
   ``$SEGFLOW_SHARED_DATA/DRIVE`` when ``data/drive`` is missing; skipped with a note when
   neither exists);
4. ``flow``, ``medsegdiff`` — the full generative presets for 100 steps.

Each step's whole output is kept in ``<out>/<step>.log``.

Writes ``gpu_check.json`` and ``gpu_check.md`` (one table of the steps, one of the
benchmark rows) to ``--out`` (default ``<output_root>/gpu_check/<time>``) and prints the
Markdown. ``--dry-run`` only composes every step's config (in-process, with Hydra's
compose API), which is what CI checks; ``--only ddp,flow`` runs a subset.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segflow.atomic import write_json, write_text
from segflow.runs.folders import output_root

#: Common overrides of the training steps: no TensorBoard images, CSV metrics only.
TRAIN_COMMON = ["logger=csv", "model.log_image_enabled=false",
                "++trainer.enable_progress_bar=false"]


@dataclass
class Step:
    """One check: a ``python -m <module> <args>`` with a time limit."""

    name: str
    module: str
    args: list[str]
    timeout_s: int
    needs: str | None = None  # "drive": the DRIVE data must be there
    status: str = "not run"
    seconds: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def command(self, out: Path) -> list[str]:
        pin = f"hydra.run.dir={out / self.name}"  # a known folder for each step's files
        return [sys.executable, "-m", self.module, *self.args, pin]


def default_steps() -> list[Step]:
    short_gen = ["data=synthetic_xca", "trainer=gpu", "trainer.precision=bf16-mixed",
                 "trainer.max_epochs=1000", "++trainer.max_steps=100",
                 "trainer.check_val_every_n_epoch=null", "++trainer.val_check_interval=100",
                 "test_after_fit=false", *TRAIN_COMMON]
    return [
        Step("bench", "segflow.bench",
             ["bench=full", "models=all", "train.channels_last=[true]", "train.steps=10",
              "sampling.max_seconds=20", "sampling.n_samples=[1,5]", "loader.enabled=false"], 200),
        Step("ddp", "segflow.train",
             ["trainer=ddp", "model=unet", "data=synthetic_xca", "trainer.precision=bf16-mixed",
              "trainer.max_epochs=3", "experiment_name=gpu_check_ddp", *TRAIN_COMMON], 70),
        Step("drive_csnet_gpu", "segflow.train",
             ["experiment=drive_csnet_gpu", "trainer.max_epochs=40",
              "trainer.check_val_every_n_epoch=20", *TRAIN_COMMON], 90, needs="drive"),
        # full-size flow: ~0.45 s per step of 16 x 320 px on one H200 (bench above)
        Step("flow", "segflow.train", ["model=flow", "experiment_name=gpu_check_flow", *short_gen],
             150),
        Step("medsegdiff", "segflow.train",
             ["model=medsegdiff", "experiment_name=gpu_check_medsegdiff", *short_gen], 90),
    ]


def ensure_drive() -> str | None:
    """``data/drive`` (``$SEGFLOW_DATA_DIR/drive``) prepared from the DRIVE download in
    ``$SEGFLOW_SHARED_DATA/DRIVE`` when missing; None when it is there, else a note saying
    why the step is skipped."""
    data = Path(os.environ.get("SEGFLOW_DATA_DIR", "data")) / "drive"
    if (data / "train").is_dir():
        return None
    shared = os.environ.get("SEGFLOW_SHARED_DATA")
    if not shared or not (Path(shared) / "DRIVE").is_dir():
        return (f"no DRIVE data: {data} does not exist and SEGFLOW_SHARED_DATA (the folder "
                f"holding the DRIVE download) is {'not set' if not shared else 'without DRIVE/'}")
    shared = Path(shared)
    from segflow.data.prepare.layout import prepare

    prepare("drive", shared / "DRIVE", data)
    return None


def _train_result(folder: Path) -> dict[str, Any]:
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        return {}
    m = json.loads(metrics.read_text())
    steps, secs = m.get("global_step") or 0, m.get("fit_seconds") or 0
    out = {"global_step": steps, "fit_seconds": secs,
           "steps_per_s": round(steps / secs, 2) if secs else None,
           "effective_batch_size": m.get("effective_batch_size"),
           "best_val_dice": m.get("best_val_dice")}
    if m.get("test"):
        out["test_dice"] = m["test"].get("dice")
    return out


def _bench_rows(folder: Path) -> list[dict[str, Any]]:
    found = sorted(folder.rglob("bench.json"))
    if not found:
        return []
    return json.loads(found[-1].read_text()).get("train", [])


#: The primary config of each entry point.
CONFIG_NAMES = {"segflow.train": "train", "segflow.bench": "bench"}


def compose_only(step: Step) -> None:
    """Compose the step's config in this process (what ``--dry-run`` checks): every
    override must exist and every config group option must be found."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segflow.bench.presets import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAMES[step.module], overrides=step.args)
        step.status = "composed"
        if step.module == "segflow.train":
            step.result["model"] = str(cfg.model.get("name"))
            step.result["trainer"] = {k: cfg.trainer.get(k) for k in (
                "accelerator", "devices", "strategy", "precision", "max_epochs")}
    except Exception as exc:  # noqa: BLE001 - reported in the table
        step.status, step.note = "failed to compose", str(exc).splitlines()[0][:300]
    finally:
        GlobalHydra.instance().clear()


def write_output(path: Path, stdout: str | bytes | None, stderr: str | bytes | None) -> None:
    """A step's whole output (stdout, then stderr) beside the tables, for its traceback."""
    def text(v: str | bytes | None) -> str:
        return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")

    path.write_text(f"{text(stdout)}\n--- stderr ---\n{text(stderr)}")


def error_line(output: str) -> str:
    """The line that says what went wrong: the last one naming an error or exception
    (a traceback's last line), else the last non-empty line."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return ((errors or lines or [""])[-1])[:300]


def run_steps(steps: list[Step], out: Path, dry_run: bool) -> None:
    for step in steps:
        cmd = step.command(out)
        step.result["command"] = "python " + " ".join(shlex.quote(c) for c in cmd[1:])
        if dry_run:
            compose_only(step)
            continue
        if step.needs == "drive":
            note = ensure_drive()
            if note:
                step.status, step.note = "skipped", note
                continue
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=step.timeout_s)
            write_output(out / f"{step.name}.log", proc.stdout, proc.stderr)
            ok = proc.returncode == 0
            step.status = "ok" if ok else f"failed (exit {proc.returncode})"
            if not ok:
                step.note = error_line(proc.stderr + "\n" + proc.stdout)
        except subprocess.TimeoutExpired as exc:
            write_output(out / f"{step.name}.log", exc.stdout, exc.stderr)
            step.status, step.note = "timed out", f"over {step.timeout_s} s"
        step.seconds = round(time.perf_counter() - start, 1)
        if step.module == "segflow.train":
            step.result.update(_train_result(out / step.name))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(steps: list[Step], bench_rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# segflow GPU check — {meta['time']}", "",
             f"- device: {meta['device']}; torch {meta['torch']}, pytorch-lightning "
             f"{meta['lightning']}; {'dry run (configs composed only)' if meta['dry_run'] else ''}",
             "", "| step | status | seconds | steps | steps/s | best val Dice | note |",
             "|---|---|---|---|---|---|---|"]
    for s in steps:
        r = s.result
        lines.append(f"| {s.name} | {s.status} | {_fmt(s.seconds)} | {_fmt(r.get('global_step'))} "
                     f"| {_fmt(r.get('steps_per_s'))} | {_fmt(r.get('best_val_dice'))} | {s.note} |")
    if bench_rows:
        lines += ["", "## Training step per preset (bench=full)", "",
                  "| model | precision | EMA | batch x size | step (ms) | images/s | MFU | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bench_rows:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "—"
            lines.append(f"| {r['model']} | {r['precision']} | {r.get('ema', False)} | "
                         f"{r['batch']} x {r['image_size']} | {_fmt(r.get('step_ms'))} | "
                         f"{_fmt(r.get('images_per_s'))} | {mfu} | {r.get('error') or ''} |")
    return "\n".join(lines) + "\n"


def run_check(steps: list[Step], out: str | Path | None = None, dry_run: bool = False) -> int:
    """Run ``steps`` (compose them only with ``dry_run``), write ``gpu_check.json`` and
    ``gpu_check.md`` to ``out`` (default ``<output_root>/gpu_check/<time>``), print the
    Markdown; returns the exit status (1: a step failed, 2: no CUDA GPU for a real run)."""
    import pytorch_lightning as pl
    import torch

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(out or output_root() / "gpu_check" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not dry_run and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU (none is visible); --dry-run composes the configs",
              file=sys.stderr)
        return 2
    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
              if torch.cuda.is_available() else "cpu (dry run)")
    meta = {"time": stamp, "device": device, "torch": torch.__version__,
            "lightning": pl.__version__, "dry_run": bool(dry_run)}
    run_steps(steps, out, dry_run)
    bench_rows = [] if dry_run else _bench_rows(out / "bench")
    write_json(out / "gpu_check.json",
               {"meta": meta, "steps": [asdict(s) for s in steps], "bench_train": bench_rows},
               indent=1)
    md = markdown(steps, bench_rows, meta)
    write_text(out / "gpu_check.md", md)
    print(md)
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    bad = [s.name for s in steps if s.status not in ("ok", "composed", "skipped")]
    return 1 if bad else 0
