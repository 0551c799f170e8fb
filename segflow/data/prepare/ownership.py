"""What ``segflow.prepare`` may replace in a destination: only the files it wrote itself.

The manifest of a preparation lists every file written with its SHA-256. Against it, the
files now in the destination are

* *own*: listed, unchanged — replaced or removed freely by the next preparation;
* *edited*: listed, but their hash differs (a label the user corrected) — reported and
  kept, replaced only with ``--force``;
* *foreign*: not listed (notes, an extra split the user added) — never touched: a rebuild
  keeps them, ``--force`` (which would start from scratch) refuses, naming them, and a new
  file that would land on one refuses too.

A destination prepared from another dataset kind is refused: two datasets would mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.infra.atomic import write_text
from segflow.infra.errors import DataError

log = logging.getLogger("segflow.prepare")

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listed(manifest: dict[str, Any]) -> dict[str, str]:
    return {rel: digest for entry in manifest.get("files", [])
            for rel, digest in entry.get("sha256", {}).items()}


@dataclass
class DestState:
    """What a destination holds relative to its manifest (see the module docstring)."""

    manifest: dict[str, Any] | None
    own: dict[str, str] = field(default_factory=dict)  # rel path -> manifest digest
    edited: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


def _foreign_note(paths: list[str]) -> str:
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return ", ".join(paths[:5]) + more


def inspect_dest(dest: Path) -> DestState:
    """Read ``dest``'s manifest and classify its files.

    Raises:
        DataError: ``dest`` holds files but no (readable) manifest: not a segflow preparation.
    """
    if not dest.exists():
        return DestState(None)
    if not dest.is_dir():
        raise DataError(f"{dest} is a file; choose a folder as the destination")
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except FileNotFoundError:
        if any(dest.iterdir()):
            raise DataError(f"{dest} exists and is not a segflow-prepared dataset (no {MANIFEST}); "
                            f"choose a new or empty destination folder") from None
        return DestState(None)
    except (OSError, ValueError) as exc:
        raise DataError(f"{dest / MANIFEST} cannot be read ({exc}); it is not a complete "
                        f"segflow manifest: choose a new destination folder") from None
    state = DestState(manifest, own=_listed(manifest))
    for rel, digest in state.own.items():
        f = dest / rel
        if not f.is_file():
            state.missing.append(rel)
        elif _sha256(f) != digest:
            state.edited.append(rel)
    for f in sorted(dest.rglob("*")):
        rel = f.relative_to(dest).as_posix()
        if f.is_file() and rel != MANIFEST and rel not in state.own:
            state.foreign.append(rel)
    return state


def check_dest(state: DestState, dest: Path, kind: str, force: bool) -> None:
    """Refuse what would lose or mix data (before anything is written).

    Raises:
        DataError: another dataset kind, or ``force`` with files segflow did not write.
    """
    if state.manifest is None:
        return
    old_kind = state.manifest.get("kind")
    if old_kind != kind:
        raise DataError(f"{dest} holds a {old_kind} dataset prepared from "
                        f"{state.manifest.get('source')}; preparing {kind} into it would mix two "
                        f"datasets: choose another destination folder")
    if force and state.foreign:
        raise DataError(f"--force rebuilds {dest} from scratch but it holds files segflow did not "
                        f"write: {_foreign_note(state.foreign)}; move them out first (nothing was "
                        f"changed)")


def install(staging: Path, dest: Path, manifest: dict[str, Any], state: DestState,
            force: bool) -> list[str]:
    """Move the freshly written preparation in ``staging`` into ``dest``.

    A new destination is the staging folder renamed (atomic). An existing one is updated
    file by file: own files replaced, own files no longer produced removed, edited files
    kept unless ``force``, foreign files never touched; the manifest is written last.

    Returns:
        the edited files that were kept.

    Raises:
        DataError: a new file would replace a file segflow did not write.
    """
    new = _listed(manifest)
    if state.manifest is None and not dest.exists():
        write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        staging.rename(dest)
        return []
    clash = [rel for rel in new if rel in state.foreign]
    if clash:
        raise DataError(f"{dest} already holds {_foreign_note(clash)}, which segflow did not "
                        f"write and this preparation would replace; move them out first "
                        f"(nothing was changed)")
    kept = [] if force else [rel for rel in state.edited]
    for rel in new:
        if rel in kept:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
    for rel in sorted(set(state.own) - set(new)):
        if rel in kept:
            continue
        (dest / rel).unlink(missing_ok=True)
        parent = (dest / rel).parent
        while parent != dest and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # a folder emptied by removing segflow's own files
            parent = parent.parent
    write_text(dest / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(staging, ignore_errors=True)
    if kept:
        log.warning("kept %d file(s) edited since the last preparation: %s (pass --force to "
                    "replace them)", len(kept), _foreign_note(kept))
    return kept
