"""Config values checked where they enter: one sentence naming the key, its value and what
is allowed, before anything is built or written (instead of a traceback from deep inside
PyTorch, Lightning or a DataLoader worker).

Each rule is ``(dotted key, check, what is allowed)``; keys absent from a config are
skipped (presets differ), ``null`` is allowed only where the rule says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segflow.infra.errors import ConfigError

#: Characters that cannot appear in a name that becomes one folder.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f]")


def check_name(key: str, value: object) -> str:
    """``value`` if it can be a single folder name, else a ConfigError naming ``key``."""
    name = "" if value is None else str(value)
    if not name.strip():
        raise ConfigError(f"{key}={value!r} is empty; give it a name (letters, digits, '-', '_', "
                          f"'.'), it becomes a folder name")
    if name in (".", "..") or _BAD_NAME.search(name) or name != name.strip():
        raise ConfigError(f"{key}={name!r} cannot be a folder name: it must not contain '/' or "
                          f"'\\', be '.' or '..', or start or end with a space; use e.g. "
                          f"{key}={_suggest(name)}")
    return name


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "my_run"
    return cleaned

Check = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_at_least(lo: int, null: bool = False) -> Check:
    return lambda v: (null and v is None) or (_int(v) and v >= lo)


def num_range(lo: float, hi: float | None = None, lo_open: bool = False,
              null: bool = False) -> Check:
    def ok(v: Any) -> bool:
        if v is None:
            return null
        if not _num(v):
            return False
        above = v > lo if lo_open else v >= lo
        return above and (hi is None or v <= hi)
    return ok


def one_of(*choices: Any, null: bool = False) -> Check:
    return lambda v: (null and v is None) or (not isinstance(v, (dict, list)) and v in choices)


def limit_batches(v: Any) -> bool:
    """Lightning's ``limit_*_batches``: a count (int ≥ 0) or a fraction in [0, 1]."""
    return v is None or (_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


PRECISIONS = ("32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "bf16-true",
              "16-true", "64-true", "64", 64, "transformer-engine", "transformer-engine-float16")

TRAIN_RULES: list[tuple[str, Check, str]] = [
    ("seed", int_at_least(0), "a whole number >= 0"),
    ("trainer.max_epochs", int_at_least(-1, null=True), "a whole number >= 1 (-1: no limit) or null"),
    ("trainer.max_steps", int_at_least(-1, null=True), "a whole number >= 1 (-1: no limit)"),
    ("trainer.check_val_every_n_epoch", int_at_least(1, null=True), "a whole number >= 1 or null"),
    ("trainer.accumulate_grad_batches", int_at_least(1), "a whole number >= 1"),
    ("trainer.log_every_n_steps", int_at_least(1, null=True), "a whole number >= 1"),
    ("trainer.num_nodes", int_at_least(1), "a whole number >= 1"),
    ("trainer.gradient_clip_val", num_range(0, null=True), "a number >= 0 or null"),
    ("trainer.precision", one_of(*PRECISIONS), "one of 32-true, 16-mixed, bf16-mixed, bf16-true, "
                                               "16-true, 64-true"),
    ("trainer.limit_train_batches", limit_batches, "a count >= 0 or a fraction in [0, 1]"),
    ("trainer.limit_val_batches", limit_batches, "a count >= 0 or a fraction in [0, 1]"),
    ("trainer.limit_test_batches", limit_batches, "a count >= 0 or a fraction in [0, 1]"),
    ("data.train_bs", int_at_least(1), "a whole number >= 1 (images per step and device)"),
    ("data.val_bs", int_at_least(1), "a whole number >= 1"),
    ("data.num_samples_per_image", int_at_least(1), "a whole number >= 1 (crops per image)"),
    ("data.image_size", int_at_least(8), "a whole number of pixels >= 8 (the crop side)"),
    ("data.num_workers", int_at_least(0), "a whole number >= 0 (0: load in the main process)"),
    ("data.channels", one_of(1, 3), "1 (grayscale) or 3 (RGB)"),
    ("data.gray_from", one_of("luma", "green"), "luma (ITU-R 601 weights) or green (fundus images)"),
    ("data.val_fraction", num_range(0, 1, lo_open=True), "a fraction in (0, 1]"),
    ("model.learning_rate", num_range(0, lo_open=True), "a number > 0"),
    ("model.threshold", num_range(0, 1), "a probability in [0, 1]"),
    ("model.ema_decay", num_range(0, 1, null=True), "a number in [0, 1) or null (no EMA)"),
    ("model.compile", lambda v: isinstance(v, (bool, dict)),
     "true, false or a dict of torch.compile options, e.g. {mode: max-autotune}"),
    ("model.channels_last", one_of(True, False), "true or false"),
    ("model.fused_optimizer", one_of(True, False), "true or false"),
    ("test_after_fit", one_of(True, False), "true or false"),
]

EVAL_RULES: list[tuple[str, Check, str]] = [
    ("seed", int_at_least(0), "a whole number >= 0"),
    ("split", one_of("train", "val", "test"), "train, val or test"),
    ("weights", one_of("ema", "raw"), "ema or raw"),
    ("save_images", one_of(True, False), "true or false"),
    ("max_images", int_at_least(1, null=True), "a whole number >= 1 or null (every image)"),
    ("overwrite", one_of(True, False), "true or false"),
    ("model.threshold", num_range(0, 1), "a probability in [0, 1]"),
]


def _get(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return True, node


def check(cfg: DictConfig, rules: list[tuple[str, Check, str]]) -> None:
    """Raise a ConfigError for the first value that breaks its rule."""
    for key, ok, allowed in rules:
        present, value = _get(cfg, key)
        if present and not ok(value):
            shown = "''" if value == "" else value
            raise ConfigError(f"{key}={shown} is not valid: {key} must be {allowed}")


def validate_train(cfg: DictConfig) -> None:
    check(cfg, TRAIN_RULES)
    if cfg.get("model") is not None:  # a value of the wrong type in an experiment file
        from segflow.infra.config_files import check_target_types

        check_target_types(cfg.model, "model")
    if cfg.get("trainer") is not None and _get(cfg, "trainer.max_epochs") == (True, 0):
        raise ConfigError("trainer.max_epochs=0 trains nothing: use a whole number >= 1")


def validate_eval(cfg: DictConfig) -> None:
    check(cfg, EVAL_RULES)
    present, name = _get(cfg, "data.name")
    if present and name is not None:  # it becomes part of a folder name
        check_name("data.name", name)
