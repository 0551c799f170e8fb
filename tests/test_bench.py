"""`python -m segflow.bench`: the smallest setting end to end; checks the files' structure
and the bookkeeping (NFE, skips, ratios), never the speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segflow.bench.runner import validate
from segflow.networks import UNet

from conftest import CONF, ROOT, run_entry

TINY_PRESET = """\
_target_: segflow.engine.module.SegModule
name: {name}
net:
  _target_: bench_tiny.TinyDenoiser
  in_channels: ${{data.channels}}
  width: 4
method:
  _target_: bench_tiny.TinyFlow
  steps: 2
"""

# The smallest setting: two tiny generative presets from an extra config folder, the real
# U-Net shrunk by model_overrides, a preset that does not exist, 32 px everything.
SMALL = [
    "threads=1", "models=[unet,tiny_a,tiny_b,nosuchmodel]", "+model_overrides.all.net.base_channels=4",
    "train.image_size=32", "train.batch=2", "train.warmup_steps=1", "train.steps=1",
    "sampling.n_samples=[1,2]", "sampling.max_seconds=1", "sampling.ratio=[tiny_a,tiny_b]",
    "+sampling.settings.tiny_a=[{steps:1},{steps:3}]",
    "+sampling.settings.tiny_b=[{steps:2},{bogus:1},{steps:1000000}]",
    "loader.workers=[0,1]", "loader.source_size=64", "loader.n_images=4", "loader.crop=32",
    "loader.train_bs=2", "loader.num_samples_per_image=2", "loader.epochs=2",
]


def _bench(workdir: Path, *overrides: str):
    conf = workdir / "extra_conf" / "model"
    conf.mkdir(parents=True, exist_ok=True)
    for name in ("tiny_a", "tiny_b"):
        (conf / f"{name}.yaml").write_text(TINY_PRESET.format(name=name))
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return run_entry("segflow.bench", [f"hydra.searchpath=[file://{conf.parent}]", *overrides],
                     workdir, env=env)


def test_bench_smallest_setting_writes_json_and_markdown(workdir):
    proc = _bench(workdir, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = list((workdir / "outputs" / "bench").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    for rel in ["bench.json", "bench.md", ".hydra/config.yaml", "bench.log"]:
        assert (run / rel).is_file(), rel
    result = json.loads((run / "bench.json").read_text())
    assert set(result) == {"meta", "notes", "train", "sampling", "ratios", "loader"}
    meta = result["meta"]
    assert meta["mode"] == "quick" and meta["device"] == "cpu" and meta["torch_threads"] == 1
    assert meta["command"].startswith("python -m segflow.bench ") and "train.batch=2" in meta["command"]
    assert "hydra.searchpath=" in meta["command"] and "hydra.mode" not in meta["command"]
    notes = "\n".join(result["notes"])
    assert "'nosuchmodel' is not in conf/model/" in notes
    assert "tiny_a: no key model.net.base_channels" in notes  # the `all` override applies where it can

    # Training: two rows per preset (without / with the weight EMA); FLOPs counted,
    # backward costs more than forward.
    assert sorted((r["model"], r["ema"]) for r in result["train"]) == [
        (m, e) for m in ("tiny_a", "tiny_b", "unet") for e in (False, True)]
    train = {r["model"]: r for r in result["train"]}
    assert sorted(train) == ["tiny_a", "tiny_b", "unet"]
    for row in train.values():
        assert row["error"] is None, row
        assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["batch"] == 2
        assert row["train_gflops_per_image"] > row["fwd_gflops_per_image"] > 0
        assert row["achieved_tflops"] > 0 and row["mfu"] is None  # CPU: no MFU
        assert row["peak_mem_mib"] > 0 and row["peak_mem_kind"] == "cpu_max_rss_process"
    unet_params = sum(p.numel() for p in UNet(1, 1, base_channels=4).parameters()) / 1e6
    assert abs(train["unet"]["params_m"] - unet_params) < 1e-9

    # Sampling: NFE follows the settings; bad or too slow settings are skipped with a reason.
    rows = result["sampling"]
    tiny_a = [r for r in rows if r["model"] == "tiny_a"]
    assert [(r["settings"]["steps"], r["n_samples"], r["nfe"]) for r in tiny_a] == [
        (1, 1, 1), (3, 1, 3), (1, 2, 1), (3, 2, 3)]
    assert all(r["seconds_per_image"] > 0 and r["method"] == "TinyFlow" for r in tiny_a)
    assert all(r["members"] == r["n_samples"] for r in tiny_a)  # batch 1 x ensemble
    tiny_b = [r for r in rows if r["model"] == "tiny_b" and r["n_samples"] == 1]
    assert tiny_b[0]["nfe"] == 2 and tiny_b[0]["seconds_per_image"] > 0
    assert "invalid settings" in tiny_b[1]["skipped"] and tiny_b[1]["seconds_per_image"] is None
    assert "sampling.max_seconds" in tiny_b[2]["skipped"]
    unet = [r for r in rows if r["model"] == "unet"]
    assert len(unet) == 1 and unet[0]["nfe"] == 1 and unet[0]["method"] == "Supervised"

    # Ratio tiny_b / tiny_a for every pair of timed settings at each ensemble size.
    ratios = result["ratios"]
    assert ratios["base"] == "tiny_a" and ratios["other"] == "tiny_b"
    assert len(ratios["rows"]) == 4  # 2 timed tiny_a settings x 1 timed tiny_b, x 2 ensembles
    secs = {(r["model"], r["settings"].get("steps"), r["n_samples"]): r["seconds_per_image"]
            for r in rows if r["seconds_per_image"] is not None}
    for r in ratios["rows"]:
        expect = secs[("tiny_b", 2, r["n_samples"])] / secs[("tiny_a", r["tiny_a_nfe"], r["n_samples"])]
        assert abs(r["ratio"] - expect) < 1e-9 * expect

    # Loader: one row per worker count, 2 epochs x 2 batches of 2 images x 2 crops.
    loader = result["loader"]
    assert [r["workers"] for r in loader] == [0, 1]
    for row in loader:
        assert row["error"] is None and row["batches"] == 4 and row["crops_per_s"] > 0
        assert row["startup_s"] >= 0 and row["source_size"] == 64
    assert loader[1]["persistent_workers"] and not loader[0]["persistent_workers"]

    md = (run / "bench.md").read_text()
    for heading in ["# segflow benchmark — quick mode", "## Training throughput",
                    "## Sampling cost vs NFE", "**tiny_b / tiny_a wall-clock ratio**",
                    "## Data loader", "| unet | 32 | 2 | 32-true | no | no | no | yes |"]:
        assert heading in md, heading
    assert "## Training throughput" in proc.stdout  # the tables are printed too


def test_bench_variants_measure_each_option_alone(workdir):
    proc = _bench(workdir, "threads=1", "models=[unet]", "+model_overrides.all.net.base_channels=4",
                  "train.image_size=32", "train.batch=2", "train.warmup_steps=1", "train.steps=1",
                  "train.count_flops=false", "sampling.enabled=false", "loader.enabled=false",
                  "train.variants=[32-true,32-true+channels_last,32-true+fused,bf16-mixed+ema]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = list((workdir / "outputs" / "bench").iterdir())
    rows = json.loads((run / "bench.json").read_text())["train"]
    got = [(r["variant"], r["precision"], r["channels_last"], r["compile"], r["ema"])
           for r in rows]
    assert got == [("32-true", "32-true", False, False, False),
                   ("32-true+channels_last", "32-true", True, False, False),
                   ("32-true+fused", "32-true", False, False, False),
                   ("bf16-mixed+ema", "bf16-mixed", False, False, True)]
    assert all(r["error"] is None and r["step_ms"] > 0 for r in rows)
    assert not any(r["fused_adamw"] for r in rows)  # fused kernels are CUDA only


def test_bench_unknown_variant_option_is_one_sentence(workdir):
    proc = _bench(workdir, "models=[unet]", "train.variants=[bf16-mixed+turbo]")
    assert proc.returncode == 2
    assert "train.variants: 'bf16-mixed+turbo' has unknown option(s) ['turbo']" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_bad_precision_is_one_sentence(workdir):
    proc = _bench(workdir, "train.precision=[fp8]", "models=[unet]")
    assert proc.returncode == 2
    assert "unknown precision 'fp8'" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_bench_modes_compose_and_validate(mode):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=[f"bench={mode}"])
    validate(cfg)
    assert cfg.mode == mode and cfg.peak_tflops == 989.0
    assert cfg.sampling.image_size == cfg.train.image_size  # same size unless overridden
    assert list(cfg.sampling.n_samples) == [1, 5] and list(cfg.sampling.ratio) == ["flow", "medsegdiff"]
    assert [s["steps"] for s in cfg.sampling.settings.flow] == [1, 2, 5, 10, 20]
    assert [(s["sampler"], s["steps"]) for s in cfg.sampling.settings.medsegdiff] == [
        ("ddpm", 1000), ("ddim", 50), ("dpm_solver", 20)]
    if mode == "full":
        assert cfg.train.image_size == 320 and "bf16-mixed" in cfg.train.precision
    else:
        assert cfg.train.image_size <= 64 and list(cfg.loader.workers) == [0, 1, 2]
