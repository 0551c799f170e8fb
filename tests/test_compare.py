"""make compare / segflow.compare: train, grid-evaluate the generative runs, one merged table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from segflow.compare import spearman

from conftest import TINY, run_entry

FLOW_TINY = [t for t in TINY if not t.startswith("model.net.")] + [
    "model.net.model_channels=8", "model.net.channel_mult=[1,2]", "model.net.num_blocks=1",
    "model.net.attn_resolutions=[]", "model.net.image_size=32", "model.net.num_head_channels=8"]


def test_spearman_matches_closed_forms():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (0, 0, 1, -1): rho = 1 - 6*2 / (4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None


def test_compare_merges_families_trained_separately(workdir):
    grid = ["--steps", "1,2", "--samples", "1,2"]
    first = run_entry("segflow.compare", ["--data", "synthetic_xca", "--models", "unet,medsegdiff_small",
                                          *grid, *TINY, "trainer=debug"], workdir, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    # flow_small's own test (2 steps x 4 members, capped by trainer=debug to 2 x 1) is not
    # in this grid: it joins the table.
    second = run_entry("segflow.compare", ["--data", "synthetic_xca", "--models", "flow_small",
                                           "--steps", "1", "--samples", "1,2", *FLOW_TINY,
                                           "trainer=debug"], workdir, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    reports = sorted((workdir / "outputs" / "compare" / "compare_synthetic_xca").glob("*/compare.csv"))
    assert reports, second.stdout[-2000:]
    with reports[-1].open() as f:
        rows = list(csv.DictReader(f))
    by_model: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    # The second invocation's table holds the first one's runs too.
    assert set(by_model) == {"unet", "medsegdiff_small", "flow_small"}
    assert len(by_model["unet"]) == 1 and by_model["unet"][0]["nfe_per_image"] in ("1", "1.0")
    expected = {"medsegdiff_small": {("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")},
                "flow_small": {("1", "1"), ("1", "2"), ("2", "1")}}
    for model in ("medsegdiff_small", "flow_small"):
        settings = [(r["steps"], r["n_samples"]) for r in by_model[model]]
        assert sorted(settings) == sorted(expected[model]), settings
        for r in by_model[model]:
            assert float(r["nfe_per_image"]) == int(r["steps"]) * int(r["n_samples"])
            # trainer=debug tests two images: too few for a rank correlation (it needs 3)
            assert r["spearman_uncertainty_error"] == ""
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and not math.isnan(float(r["auc"]))
        assert float(r["params_m"]) > 0 and float(r["fit_minutes"]) >= 0
    assert (reports[-1].parent / "compare.md").read_text().count("| flow_small |") == 3
    # ensembles record the per-image uncertainty the correlation is computed from
    flow_run = Path(by_model["flow_small"][0]["run"])
    per_image = sorted(flow_run.glob("eval/*/per_image.csv"))
    assert per_image and any("mean_uncertainty" in p.read_text().splitlines()[0] for p in per_image)
