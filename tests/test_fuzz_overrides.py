"""Random command lines against the checks every job passes before any folder exists
(:mod:`segflow.infra.precheck`): each combination of values of the wrong type or range,
interpolations (recursive, of missing keys, of other keys) and unknown keys either passes or
is refused with one sentence; nothing else escapes, and nothing is written."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from segflow.infra.errors import SegflowError
from segflow.infra.precheck import apply_overrides, check_job
from segflow.infra.validate import validate_train

from conftest import CONF

KEYS = ["seed", "trainer.max_epochs", "trainer.max_steps", "trainer.precision",
        "trainer.gradient_clip_val", "trainer.accumulate_grad_batches",
        "trainer.limit_train_batches", "data.train_bs", "data.image_size", "data.num_workers",
        "data.channels", "data.num_samples_per_image", "model.learning_rate", "model.threshold",
        "model.ema_decay", "model.net.base_channels", "model.compile", "test_after_fit",
        "experiment_name", "sweep_name", "paths.output_root"]
VALUES = ["0", "1", "-1", "3", "1000", "0.5", "1e-3", "1e12", "-0.1", "nan", "inf", "abc", "''",
          "null", "true", "false", "[1,2]", "{a: 1}", "32-true", "bf16-mixed", "8",
          "${seed}", "${nosuch.key}", "${model.learning_rate}", "${oc.env:NOSUCH_VAR,3}",
          "${oops:1}", "'${data.image_size}'"]


def _combination(rng: random.Random) -> list[str]:
    out = []
    for key in rng.sample(KEYS, rng.randint(1, 4)):
        value = rng.choice(VALUES + [f"${{{key}}}"])  # now and then a key naming itself
        out.append(f"{key}={value}")
    if rng.random() < 0.2:  # a key that is not there, with or without +
        out.append(rng.choice(["nosuch=1", "+nosuch=${nosuch}", "model.nosuch=2", "+data.x=y",
                               "trainer.nosuch.deep=1"]))
    return out


@pytest.fixture(scope="module")
def bases():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [compose("train", overrides=o, return_hydra_config=True) for o in
                (["debug=default"], ["model=csnet"], ["model=flow_small", "data=synthetic_octa"])]


def test_random_overrides_pass_or_are_one_sentence(bases, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(2026)
    start, outcomes = time.time(), {"ok": 0, "refused": 0}
    for i in range(200):
        overrides = _combination(rng)
        try:
            check_job(apply_overrides(rng.choice(bases), overrides), validate_train)
            outcomes["ok"] += 1
        except SegflowError as exc:
            sentence = str(exc)
            assert sentence and "\n" not in sentence and "Traceback" not in sentence, (overrides, sentence)
            outcomes["refused"] += 1
        except Exception as exc:  # anything else would reach the user as a traceback
            pytest.fail(f"#{i} {overrides}: {type(exc).__name__}: {exc}")
    print(outcomes, round(time.time() - start, 1), "s")
    assert outcomes["ok"] > 10 and outcomes["refused"] > 80, outcomes
    assert list(tmp_path.iterdir()) == [] and not any(
        Path(p).exists() for p in (tmp_path / "outputs", tmp_path / "runs"))
    assert time.time() - start < 60
