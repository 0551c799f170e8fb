"""The Lightning internals segflow uses (segflow.infra.compat) and the tested version bounds."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from segflow.infra import compat

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_internals_are_where_segflow_expects_them():
    problems = compat.lightning_problems()
    assert not problems, "Lightning changed under segflow:\n" + "\n".join(problems)


def test_a_missing_internal_is_named(monkeypatch):
    from pytorch_lightning.strategies.launchers import subprocess_script

    monkeypatch.delattr(subprocess_script, "_hydra_subprocess_cmd")
    problems = compat.lightning_problems()
    assert any("_hydra_subprocess_cmd is gone" in p and "segflow.infra.compat" in p for p in problems)


def test_a_lightning_outside_the_range_is_named(monkeypatch):
    monkeypatch.setattr(compat.pl, "__version__", "2.7.0")
    problems = compat.lightning_problems()
    assert any("2.7.0 is outside the tested range" in p for p in problems)


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_every_dependency_has_an_upper_bound_and_the_installed_version_fits():
    for req in _requirements():
        assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), (
            f"pyproject.toml: {req} has no upper bound")
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} is a dependency but not installed")
        assert req.specifier.contains(version, prereleases=True), (
            f"installed {req.name} {version} is outside pyproject.toml's {req.specifier}")


def test_compat_range_is_pyprojects():
    (pl_req,) = [r for r in _requirements() if r.name == "pytorch-lightning"]
    assert str(pl_req.specifier) == ",".join(sorted(compat.LIGHTNING_SUPPORTED.split(",")))
    assert re.fullmatch(r">=2\.\d+,<2\.\d+", compat.LIGHTNING_SUPPORTED)
