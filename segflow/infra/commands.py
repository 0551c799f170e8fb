"""Command-line rewriting shared by the commands that load a trained run (eval, predict)."""

from __future__ import annotations

#: Config groups whose dotted keys are added to (not only overridden in) the config.
OPEN_KEYS = ("model.", "data.", "grid.")


def open_key_overrides(argv: list[str]) -> list[str]:
    """Prefix ``model.*``, ``data.*`` and ``grid.*`` overrides with ``++``: these groups are
    empty in eval.yaml / predict.yaml (the values come from the checkpoint), so Hydra would
    refuse keys it has not seen. Idempotent (DDP child processes re-run the same command
    line)."""
    return [f"++{a}" if a.startswith(OPEN_KEYS) and "=" in a else a for a in argv]
