"""The steps of the prepared GPU check (``python -m segflow.bench.gpu_check``,
``make gpu-check``) and its report.

Runs, each under its own time limit (about 10 minutes in all on one GPU):

1. ``fused_attention`` — one training step of the full ``flow`` and ``medsegdiff`` presets
   (16 x 320 px, bf16) with attention restricted to the flash / memory-efficient kernels
   (fails loudly on the math fallback), and the host synchronisations inside a step;
2. ``options_flow``, ``options_medsegdiff`` — the training step (time, peak memory, MFU)
   with each speed option alone (``bench`` ``train.variants``: bf16-mixed, + channels-last,
   + fused AdamW, + torch.compile, 32-true, and all of them), and ``flow`` without the
   80-px attention level (``flow_attn40``);
3. ``ddp`` — ``trainer=ddp`` on every visible GPU, a short synthetic run;
4. ``drive_csnet_gpu``, ``drive_flow_gpu`` — the DRIVE experiments for a fixed wall-clock
   budget (``trainer.max_time``), then tested: the time at which val Dice first reached
   0.7 / 0.8 / 0.82 (``TimeToDice``) and the data loader's wait share (``LoaderWait``).
   DRIVE is prepared from ``$SEGFLOW_SHARED_DATA/DRIVE`` when ``data/drive`` is missing;
   skipped with a note when neither exists;
5. ``flow`` — the full flow preset for 100 steps on synthetic XCA crops (the loader's
   wait at the GPU's step rate).

Each step's whole output is kept in ``<out>/<step>.log``.

Writes ``gpu_check.json`` and ``gpu_check.md`` (the steps, the option table, the fused
attention check) to ``--out`` (default ``<output_root>/gpu_check/<time>``) and prints the
Markdown. ``--dry-run`` only composes every step's config (in-process, with Hydra's
compose API; the argument parsers of the non-Hydra steps), which is what CI checks;
``--only ddp,flow`` runs a subset.
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

from segflow.infra.atomic import write_json, write_text
from segflow.runs.layout import Layout, RunFolder
from segflow.runs.records import RunRecord

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
    hydra: bool = True        # a Hydra entry point (else argparse: --out <folder>)
    status: str = "not run"
    seconds: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def command(self, out: Path) -> list[str]:
        if not self.hydra:
            return [sys.executable, "-m", self.module, *self.args, "--out", str(out / self.name)]
        pin = f"hydra.run.dir={out / self.name}"  # a known folder for each step's files
        return [sys.executable, "-m", self.module, *self.args, pin]


#: Each speed option alone, then all together (``bench`` ``train.variants``).
OPTION_VARIANTS = ["bf16-mixed", "bf16-mixed+channels_last", "bf16-mixed+fused",
                   "bf16-mixed+compile", "32-true", "bf16-mixed+channels_last+fused+compile"]
#: Levels of val Dice whose first-reached time the DRIVE steps report.
DICE_LEVELS = "[0.7,0.8,0.82]"


def _options(models: str, variants: list[str], *extra: str) -> list[str]:
    return ["bench=full", f"models={models}", "train.variants=[" + ",".join(variants) + "]",
            "train.steps=10", "sampling.enabled=false", "loader.enabled=false", *extra]


def drive_budget(steps: list[Step], minutes: float) -> None:
    """Give the DRIVE steps ``minutes`` of training each (``trainer.max_time``; the
    schedule's length left as the experiment sets it) and the time limit to match."""
    for step in steps:
        if step.needs != "drive":
            continue
        secs = int(minutes * 60)
        step.args = [a for a in step.args if not a.startswith(("++trainer.max_time=",
                                                               "trainer.max_epochs="))]
        step.args.append(f"++trainer.max_time=00:{secs // 3600:02d}:{secs % 3600 // 60:02d}:"
                         f"{secs % 60:02d}")
        step.timeout_s = secs + 90  # start-up, data, the test set


def default_steps() -> list[Step]:
    short_gen = ["data=synthetic_xca", "trainer=gpu", "trainer.precision=bf16-mixed",
                 "trainer.max_epochs=1000", "++trainer.max_steps=100",
                 "trainer.check_val_every_n_epoch=null", "++trainer.val_check_interval=100",
                 "test_after_fit=false", *TRAIN_COMMON]
    drive = [f"callbacks.time_to_dice.levels={DICE_LEVELS}", *TRAIN_COMMON]
    return [
        Step("fused_attention", "segflow.bench.fused_attention",
             ["--models", "flow,medsegdiff", "--size", "320", "--batch", "16"], 60, hydra=False),
        Step("options_flow", "segflow.bench", _options("[flow]", OPTION_VARIANTS), 180),
        Step("options_medsegdiff", "segflow.bench",
             _options("[medsegdiff]", [v for v in OPTION_VARIANTS if "compile" not in v]), 50),
        Step("flow_attn40", "segflow.bench",
             _options("[flow]", ["bf16-mixed+channels_last+fused"],
                      "+model_overrides.flow={net:{attn_resolutions:[40]}}", "train.count_flops=false"),
             30),
        Step("ddp", "segflow.train",
             ["trainer=ddp", "model=unet", "data=synthetic_xca", "trainer.precision=bf16-mixed",
              "trainer.max_epochs=3", "experiment_name=gpu_check_ddp", *TRAIN_COMMON], 60),
        # A fixed training budget each (Lightning's max_time), then the test set.
        # The schedule sized to the budget (max_epochs), max_time as the limit.
        Step("drive_csnet_gpu", "segflow.train",
             ["experiment=drive_csnet_gpu", "trainer.max_epochs=160",
              "++trainer.max_time=00:00:01:45", "trainer.check_val_every_n_epoch=20", *drive],
             150, needs="drive"),
        Step("drive_flow_gpu", "segflow.train",
             ["experiment=drive_flow_gpu", "trainer.max_epochs=100",
              "++trainer.max_time=00:00:02:00", "trainer.check_val_every_n_epoch=20", *drive],
             180, needs="drive"),
        # full-size flow on synthetic crops: the data loader's wait at the GPU's step rate
        Step("flow", "segflow.train", ["model=flow", "experiment_name=gpu_check_flow",
                                       "model.channels_last=true", *short_gen], 90),
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
    record = RunRecord.read(folder, strict=False) if RunFolder(folder).metrics.is_file() else None
    if record is None:
        return {}
    m = record.as_dict()
    steps, secs = m.get("global_step") or 0, m.get("fit_seconds") or 0
    out = {"global_step": steps, "fit_seconds": secs,
           "steps_per_s": round(steps / secs, 2) if secs else None,
           "effective_batch_size": m.get("effective_batch_size"),
           "best_val_dice": m.get("best_val_dice")}
    if m.get("test"):
        out["test_dice"] = m["test"].get("dice")
    if m.get("time_to_dice"):
        out["time_to_dice"] = {k: (v or {}).get("seconds") for k, v in m["time_to_dice"].items()
                               if k != "metric"}
    if m.get("loader"):
        out["loader_wait_fraction"] = m["loader"].get("wait_fraction")
    return out


def _bench_rows(folder: Path) -> list[dict[str, Any]]:
    found = sorted(folder.rglob("bench.json"))
    if not found:
        return []
    return json.loads(found[-1].read_text()).get("train", [])


def _fused_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "fused_attention.json"
    return json.loads(path.read_text()) if path.is_file() else []


#: The primary config of each entry point.
CONFIG_NAMES = {"segflow.train": "train", "segflow.bench": "bench"}


def parse_only(step: Step) -> None:
    """``--dry-run`` of a non-Hydra step: its arguments must parse (``--help``-free)."""
    import importlib

    mod = importlib.import_module(step.module)
    parser_error: list[str] = []
    try:
        mod.parse_args(step.args)
        step.status = "composed"
    except SystemExit:
        parser_error.append("its arguments do not parse")
    except AttributeError:
        parser_error.append(f"{step.module} has no parse_args")
    if parser_error:
        step.status, step.note = "failed to compose", parser_error[0]


def compose_only(step: Step) -> None:
    """Compose the step's config in this process (what ``--dry-run`` checks): every
    override must exist and every config group option must be found."""
    if not step.hydra:
        parse_only(step)
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from segflow.bench.presets import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAMES[step.module], overrides=step.args)
        if step.module == "segflow.bench":
            from segflow.bench.runner import train_settings, validate

            validate(cfg)  # the variants' precisions and options too
            step.result["variants"] = [o["variant"] for o in train_settings(cfg.train)]
            step.result["model_overrides"] = OmegaConf.to_container(cfg.model_overrides)
        step.status = "composed"
        if step.module == "segflow.train":
            step.result["model"] = str(cfg.model.get("name"))
            step.result["trainer"] = {k: cfg.trainer.get(k) for k in (
                "accelerator", "devices", "strategy", "precision", "max_epochs", "max_time")}
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
        elif step.module == "segflow.bench":
            rows = _bench_rows(out / step.name)
            if rows:
                step.result["train_rows"] = rows
        elif step.name == "fused_attention":
            step.result["models"] = _fused_rows(out / step.name)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _levels(times: dict[str, Any] | None) -> str:
    if not times:
        return "—"
    return " / ".join(_fmt(v) for v in times.values())


def markdown(steps: list[Step], bench_rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# segflow GPU check — {meta['time']}", "",
             f"- device: {meta['device']}; torch {meta['torch']}, pytorch-lightning "
             f"{meta['lightning']}; {'dry run (configs composed only)' if meta['dry_run'] else ''}",
             "", "| step | status | seconds | steps | steps/s | best val Dice | test Dice "
             f"| s to val Dice {DICE_LEVELS.strip('[]').replace(',', ' / ')} | loader wait | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        r = s.result
        wait = r.get("loader_wait_fraction")
        lines.append(f"| {s.name} | {s.status} | {_fmt(s.seconds)} | {_fmt(r.get('global_step'))} "
                     f"| {_fmt(r.get('steps_per_s'))} | {_fmt(r.get('best_val_dice'))} "
                     f"| {_fmt(r.get('test_dice'))} | {_levels(r.get('time_to_dice'))} "
                     f"| {f'{100 * wait:.1f}%' if wait is not None else '—'} | {s.note} |")
    fused = [m for s in steps for m in s.result.get("models", [])]
    if fused:
        lines += ["", "## Attention on fused kernels (sdpa_kernel restricted, one training step)", "",
                  "| model | fused | attention operators | host syncs in a step | note |",
                  "|---|---|---|---|---|"]
        for m in fused:
            ops = ", ".join(o for o in m.get("attention_ops", []) if o.startswith("aten::_"))
            lines.append(f"| {m['model']} | {m['ok']} | {ops or '—'} | {_fmt(m.get('host_syncs'))} "
                         f"| {m.get('error') or '; '.join(m.get('sync_examples', []))} |")
    if bench_rows:
        lines += ["", "## Training step per option (bench=full, each option alone)", "",
                  "| step | model | variant | batch x size | step (ms) | images/s | peak mem (GiB) "
                  "| MFU | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in bench_rows:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "—"
            mem = r["peak_mem_mib"] / 1024 if r.get("peak_mem_mib") is not None else None
            variant = r.get("variant") or (f"{r['precision']}" + ("+channels_last" if r.get("channels_last") else "")
                                            + ("+compile" if r.get("compile") else "")
                                            + ("+ema" if r.get("ema") else ""))
            lines.append(f"| {r.get('step', '')} | {r['model']} | {variant} | {r['batch']} x "
                         f"{r['image_size']} | {_fmt(r.get('step_ms'))} | {_fmt(r.get('images_per_s'))} "
                         f"| {_fmt(mem)} | {mfu} | {r.get('error') or ''} |")
    return "\n".join(lines) + "\n"


def run_check(steps: list[Step], out: str | Path | None = None, dry_run: bool = False) -> int:
    """Run ``steps`` (compose them only with ``dry_run``), write ``gpu_check.json`` and
    ``gpu_check.md`` to ``out`` (default ``<output_root>/gpu_check/<time>``), print the
    Markdown; returns the exit status (1: a step failed, 2: no CUDA GPU for a real run)."""
    import pytorch_lightning as pl
    import torch

    out = Path(out or Layout.at().tool("gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not dry_run and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU (none is visible); --dry-run composes the configs",
              file=sys.stderr)
        return 2
    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
              if torch.cuda.is_available() else "cpu (dry run)")
    meta = {"time": out.name, "device": device, "torch": torch.__version__,
            "lightning": pl.__version__, "dry_run": bool(dry_run)}
    run_steps(steps, out, dry_run)
    bench_rows = [{"step": s.name, **r} for s in steps for r in s.result.get("train_rows", [])]
    write_json(out / "gpu_check.json",
               {"meta": meta, "steps": [asdict(s) for s in steps], "bench_train": bench_rows},
               indent=1)
    md = markdown(steps, bench_rows, meta)
    write_text(out / "gpu_check.md", md)
    print(md)
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    bad = [s.name for s in steps if s.status not in ("ok", "composed", "skipped")]
    return 1 if bad else 0
