"""The shape of the result files ``segflow.report`` reads: a file of another shape (edited
by hand, written by another tool) is skipped with one sentence naming it and the key,
never a ``TypeError`` half-way through a report. No torch, no Hydra."""

from __future__ import annotations

from typing import Any

#: (key, what it must be) of a run's ``metrics.json`` and of an evaluation's ``metrics.json``.
_RUN_KEYS = (("test", "an object of metric names to numbers"),)
_EVAL_KEYS = (("metrics", "an object of metric names to numbers"),
              ("settings", "an object of sampling settings"))


def _is_number_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, int | float | type(None)) and not isinstance(v, bool) for v in value.values())


def result_problem(data: dict[str, Any], kind: str = "run") -> str | None:
    """What is wrong with a result's shape (``kind``: "run" or "eval"), or None."""
    for key, what in (_RUN_KEYS if kind == "run" else _EVAL_KEYS):
        value = data.get(key)
        if value is None:
            continue
        ok = _is_number_map(value) if key != "settings" else isinstance(value, dict)
        if not ok:
            return f'"{key}" is {type(value).__name__} {str(value)[:60]}, not {what}'
    if kind == "run":
        for key in ("model", "data"):
            if key in data and not isinstance(data[key], str | type(None)):
                return f'"{key}" is {type(data[key]).__name__}, not a name'
    return None

