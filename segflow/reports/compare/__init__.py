"""A comparison of segmenters that a reviewer accepts: ``python -m segflow.compare``.

The protocol (each stage a real segflow command, so every number can be reproduced alone):

1. **train** — one multirun ``segflow.train -m model=<models> seed=<seeds> data=<data>``
   (plus the given overrides): every model gets the same optimiser steps, crops per step
   and crop size (they come from the data and trainer configs, which model presets never
   set), once per seed. A validation split is held out of train (``data.val_fraction``;
   datasets with a ``val/`` folder use it).
2. **select on validation** — every run is evaluated on the **val** split under a quality ×
   cost grid: sampling steps × ensemble members for the generative models, test-time
   augmentation passes (flips / quarter turns) for the one-pass ones. For every model and
   every NFE budget (network evaluations per image, ``--nfe 1,4,8``), the setting with the
   best mean val Dice over seeds among those within the budget is chosen.
3. **test once** — each chosen setting is evaluated on the test split of every seed's run,
   and on every further prepared dataset (``--also-test name:root``, other sites).
4. **table** — one row per model and budget: the setting val chose, Dice (pooled and
   per-image mean, mean ± std over seeds), clDice, Betti errors, AUC, ECE, and the paired
   two-level bootstrap 95 % interval (seeds × images) of the per-image Dice difference to
   the reference supervised row of the same budget (the supervised model val ranks first
   there), with a verdict (better / tie / worse); for ensembles, Spearman's ρ between
   per-image uncertainty per predicted vessel pixel and per-image error (1 − Dice), with
   its interval. Written to ``outputs/compare/<name>/<time>/compare.{csv,md}``.
5. **refinement** — beside the table, each generative model's one-sample Dice against
   sampling steps (mean ± std over seeds, non-decreasing within 0.005 or not) on val, and
   with ``--refinement`` on the test split too: ``refinement.csv``.
"""

from segflow.reports.compare.protocol import (
    DEFAULT_MODELS,
    Budgeted,
    choose_settings,
    run_seed,
)
from segflow.reports.compare.table import build_rows, spearman, write_report

__all__ = ["DEFAULT_MODELS", "Budgeted", "build_rows", "choose_settings", "run_seed",
           "spearman", "write_report"]
