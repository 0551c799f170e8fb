"""Command-line rewriting shared by the commands that load a trained run (eval, predict)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

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


def wants_help(argv: list[str]) -> bool:
    """``--help`` / ``-h`` among the arguments (Hydra's ``--hydra-help`` is not help)."""
    return any(a in ("--help", "-h") for a in argv)


def config_help(doc: str, config_file: str | Path) -> str:
    """A command's own help: its docstring, then the keys of its config file (the top-level
    ``key: value  # comment`` lines and their continued comments), without composing
    anything or importing torch — so it prints at once and lists only what applies."""
    lines = [doc.strip(), "", f"Keys ({Path(config_file).name}; set them as key=value):"]
    in_hydra = False
    for raw in Path(config_file).read_text().splitlines():
        if raw.startswith(("hydra:", "defaults:")):
            in_hydra = True
            continue
        if raw and not raw.startswith((" ", "#")):
            in_hydra = False
        if in_hydra or not raw.strip() or raw.startswith("#"):
            continue
        if not raw.startswith(" "):
            lines.append("  " + raw)
        elif raw.strip().startswith("#") and lines[-1].startswith("  ") and "#" in lines[-1]:
            pad = lines[-1].index("#")
            lines.append(" " * pad + raw.strip())
    lines += ["", "debug=default: the smoke-check limits (the first 2 images, central 128 px, "
              "sampling capped); --hydra-help: Hydra's own options"]
    return "\n".join(lines)
