"""User config files and values that Hydra/OmegaConf would otherwise report with a long
stack trace, as one sentence naming the file or key:

* :func:`check_config_dirs` — a YAML syntax error in a ``--config-dir`` folder (an
  experiment file of the user's): the file, line and column;
* :func:`check_target_types` — a value of the wrong type for a ``_target_``'s argument
  (``model.net.base_channels: "sixteen"`` in an experiment file): the key, the value and
  the type the argument takes, before anything is built.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from segflow.infra.errors import ConfigError


def _config_dirs(argv: Sequence[str]) -> list[Path]:
    dirs: list[Path] = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def yaml_problem(path: Path) -> str | None:
    """One sentence for a YAML syntax error in ``path`` (None when it parses)."""
    try:
        yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return (f"{path}{where}: the YAML cannot be read ({problem}); fix that line (indentation, "
                f"a missing ':' or an unclosed quote or bracket)")
    except OSError:
        return None
    return None


def check_config_dirs(argv: Sequence[str] | None = None) -> None:
    """Exit with status 2 and one sentence when a YAML file under a ``--config-dir`` of
    ``argv`` (default ``sys.argv``) does not parse."""
    for folder in _config_dirs(list(sys.argv[1:] if argv is None else argv)):
        for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else []:
            problem = yaml_problem(path)
            if problem is not None:
                print(f"Error: {problem}", file=sys.stderr, flush=True)
                raise SystemExit(2)


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}


def _expected(annotation: Any) -> tuple[type, ...] | None:
    """The simple types (int / float / bool / str) an annotation allows, None if it allows
    more (lists, objects, Any) or cannot be read."""
    if isinstance(annotation, str):
        names = [a.strip() for a in annotation.replace("Optional[", "").rstrip("]").split("|")]
        if not all(n in _SIMPLE or n == "None" for n in names):
            return None
        return tuple(_SIMPLE[n] for n in names if n in _SIMPLE) + ((type(None),) if "None" in names else ())
    args = typing.get_args(annotation) or (annotation,)
    if not all(a in _SIMPLE.values() or a is type(None) for a in args):
        return None
    return tuple(args)


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed
    if isinstance(value, str):
        return str in allowed
    return True  # lists / dicts: not a simple argument


def check_target_types(node: Any, prefix: str) -> None:
    """Walk ``node``; for each ``_target_`` whose class or function can be imported, check
    that plain values fit the simple annotations (int, float, bool, str) of its arguments.

    Raises:
        ConfigError: naming the key, the value and the type wanted.
    """
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_target_types(item, f"{prefix}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    params: dict[str, inspect.Parameter] = {}
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        params = _params(target)
    for key in node:
        key = str(key)
        if key.startswith("_"):
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation that does not resolve here: not ours to judge
            continue
        if OmegaConf.is_config(value):
            check_target_types(value, f"{prefix}.{key}")
            continue
        if key in params:
            allowed = _expected(params[key].annotation)
            if allowed and not _fits(value, allowed):
                want = " or ".join("null" if t is type(None) else {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a text"}[t.__name__] for t in allowed)
                raise ConfigError(f"{prefix}.{key}={value!r} is not valid: {prefix}.{key} must be "
                                  f"{want} (check the experiment file or the command line)")


def _params(target: str) -> dict[str, inspect.Parameter]:
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        return dict(inspect.signature(obj).parameters)
    except Exception:  # not importable here (an optional logger ...): Hydra will say
        return {}
