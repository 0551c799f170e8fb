"""Command-line rewriting shared by the commands that load a trained run (eval, predict)."""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Config groups whose dotted keys are added to (not only overridden in) the config.
OPEN_KEYS = ("model.", "data.", "grid.")


def open_key_overrides(argv: list[str]) -> list[str]:
    """Prefix ``model.*``, ``data.*`` and ``grid.*`` overrides with ``++``: these groups are
    empty in eval.yaml / predict.yaml (the values come from the checkpoint), so Hydra would
    refuse keys it has not seen. Idempotent (DDP child processes re-run the same command
    line)."""
    return [f"++{a}" if a.startswith(OPEN_KEYS) and "=" in a else a for a in argv]


def start_hydra(hydra_main: Callable[[], object], register_resolvers: Callable[[], None],
                open_keys: bool = False) -> None:
    """How every Hydra command starts: a YAML syntax error in ``--config-dir`` is one
    sentence, ``open_keys`` (commands that load a trained run) opens the ``model.*`` /
    ``data.*`` / ``grid.*`` keys, the configs' resolvers are registered, then Hydra runs."""
    from segflow.infra.config_files import check_config_dirs

    check_config_dirs()
    if open_keys:
        sys.argv[1:] = open_key_overrides(sys.argv[1:])
    register_resolvers()
    hydra_main()
