"""The whole comparison: train → select on val → test once → table (see :mod:`segflow.compare`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segflow.infra.errors import ConfigError, DataError
from segflow.infra.machine import hardware
from segflow.metrics.verdicts import DEFAULT_MARGINS
from segflow.reports.compare import protocol as P
from segflow.reports.compare.table import (
    build_rows,
    markdown,
    protocol_notes,
    refinement_markdown,
    refinement_rows,
    update_section,
    write_refinement,
    write_report,
)
from segflow.runs.layout import Layout, finished_runs
from segflow.runs.records import RunRecord, commit


@dataclass
class Comparison:
    """What ``python -m segflow.compare`` was asked (see :mod:`segflow.compare`)."""

    data: str
    models: str | None = None  # None: DEFAULT_MODELS to train; every model found to report
    seeds: str | None = None  # None: "0" to train; every seed found to report
    nfe: list[float] = field(default_factory=lambda: [1.0, 4.0, 8.0])
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    samples: list[int] = field(default_factory=lambda: [1, 4])
    tta: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    also_test: list[str] = field(default_factory=list)
    name: str | None = None
    out: Path | None = None
    into: Path | None = None  # a Markdown page whose section <name> receives the tables
    train: bool = True
    evaluate: bool = True
    overrides: list[str] = field(default_factory=list)
    n_boot: int = 4000
    refinement: bool = False  # also the one-sample step curve on the own test split
    gflops: list[float] = field(default_factory=list)  # budgets in counted GFLOPs per image
    margins: dict[str, float] = field(default_factory=dict)  # equivalence margins (defaults else)
    adjust: str | None = None  # "holm": Holm-adjusted p-values over the table's comparisons
    select: str = "dice"  # the val selection rule (protocol.SELECTION_RULES)

    @property
    def sweep(self) -> str:
        return self.name or f"compare_{self.data}"

    @property
    def layout(self) -> Layout:
        """The output root the comparison trains into (its ``paths.output_root=`` override,
        else the default): its runs are looked for there too."""
        return Layout.from_overrides(self.overrides)


def _command(c: Comparison) -> str:
    parts = ["python -m segflow.compare", f"--data {c.data}"]
    parts += [f"--models {c.models}"] if c.models else []
    parts += [f"--seeds {c.seeds}"] if c.seeds else []
    parts += [f"--nfe {','.join(f'{b:g}' for b in c.nfe)}"]
    parts += [f"--gflops {','.join(f'{b:g}' for b in c.gflops)}"] if c.gflops else []
    parts += [f"--margin {','.join(f'{k}={v:g}' for k, v in c.margins.items())}"] if c.margins else []
    parts += [f"--adjust {c.adjust}"] if c.adjust else []
    parts += [f"--select {c.select}"] if c.select != "dice" else []
    parts += [f"--also-test {a}" for a in c.also_test]
    parts += ["--refinement"] if c.refinement else []
    return " ".join(parts + c.overrides)


def _shown(path: Path) -> str:
    """A run folder as the table names it: relative to the working directory when inside it
    (a page in the repository does not name the machine's folders)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _commit() -> str:
    return commit()["sha"][:7]


def _run_commit(run: Path) -> str:
    record = RunRecord.read(run, strict=False)
    sha = ((record.commit if record is not None else None) or {}).get("sha", "unknown")
    dirty = ((record.commit if record is not None else None) or {}).get("dirty")
    return f"`{sha[:7]}`" + (" with uncommitted changes" if dirty else "") if sha != "unknown" else "commit unknown"


def _commit_warning(commits) -> str:
    """A line when the runs were trained at different commits (or some at an unknown one)."""
    shas = set(commits)
    if len(shas) <= 1:
        return ""
    print(f"warning: the runs were trained at {len(shas)} different commits: "
          f"{', '.join(sorted(shas))}", flush=True)
    return f"\n**The runs come from {len(shas)} commits**: {', '.join(sorted(shas))}.\n"


def run(c: Comparison) -> Path:
    """Every stage of the comparison; returns the report folder."""
    also = P.also_test_sets(c.also_test)  # refused before anything runs
    if c.adjust not in (None, "holm"):
        raise ConfigError(f"--adjust {c.adjust}: the adjustment offered is holm")
    if not c.nfe or min(c.nfe) < 1:
        raise ConfigError(f"--nfe {c.nfe}: give NFE budgets >= 1, e.g. --nfe 1,4,8")
    if c.train:
        P.check_test_split(c.data, c.overrides)  # refused before anything trains
        c.models, c.seeds = c.models or P.DEFAULT_MODELS, c.seeds or "0"
        P.train(c.models, c.data, c.seeds, c.sweep, c.overrides)
    wanted = set(c.models.split(",")) if c.models else None
    seeds = {int(s) for s in c.seeds.split(",")} if c.seeds else None
    sweep = P.sweep_folder(c.sweep, c.layout)
    runs = {k: r for k, r in P.newest_per_model_seed(finished_runs(sweep)).items()
            if (wanted is None or k[0] in wanted) and (seeds is None or k[1] in seeds)}
    if not runs:
        raise DataError(f"no finished runs under {sweep}; run the comparison's training "
                        "first (without --report-only)")
    passed = P.eval_overrides(c.overrides)
    test_sets = {run: P.test_sets_of(run, also) for run in runs.values()}
    # Stage 2: the val grid of every run (cells evaluated before are not repeated).
    if c.evaluate:
        for run in runs.values():
            have = P.read_evaluations(run, test_sets[run])
            cells = [s for s in P.val_grid(P.run_config(run), c.steps, c.samples, c.tta, max(c.nfe))
                     if not P.has_evaluation(have, "val", s)]
            for grid in P.as_grids(cells):
                P.evaluate(run, "val", grid, passed)
    val = [ev for run in runs.values() for ev in P.read_evaluations(run, test_sets[run])
           if ev.test_set == "val"]
    dice_margin = {**DEFAULT_MARGINS, **c.margins}["dice"]
    choices = P.choose_settings(val, sorted(c.nfe), select=c.select, dice_margin=dice_margin)
    choices += P.choose_settings(val, sorted(c.gflops), unit="GFLOPs", select=c.select,
                                 dice_margin=dice_margin)
    # Stage 3: each chosen setting once on every test set.
    if c.evaluate:
        for (model, _), run in runs.items():
            have = P.read_evaluations(run, test_sets[run])
            cells = [{k: v for k, v in zip(P.GRID_KEYS, key, strict=True) if v is not None}
                     for key in sorted({ch.key for ch in choices if ch.model == model}, key=str)]
            own = next(iter(P.test_sets_of(run, []).values()))
            targets = [(own, [])] + [(label, [f"data={option}", f"data.root={root}"])
                                     for label, option, root in also]
            for label, data_args in targets:
                missing = [cell for cell in cells if not P.has_evaluation(have, label, cell)]
                for grid in P.as_grids(missing):  # exact products: no setting val did not choose
                    P.evaluate(run, "test", grid, passed, data_args)
    generative = {model: P.is_generative(P.run_config(run)) for (model, _), run in runs.items()}
    # Stage 3b (--refinement): the one-sample step curve on the own test split, a diagnostic
    # of the generative models beside the table (not used to choose anything).
    if c.evaluate and c.refinement:
        for (model, _), run in runs.items():
            if not generative[model]:
                continue
            have = P.read_evaluations(run, test_sets[run])
            own = next(iter(P.test_sets_of(run, []).values()))
            missing = [{"steps": s, "n_samples": 1} for s in c.steps
                       if not P.has_evaluation(have, own, {"steps": s, "n_samples": 1})]
            for grid in P.as_grids(missing):
                P.evaluate(run, "test", grid, passed)
    evals = [ev for run in runs.values() for ev in P.read_evaluations(run, test_sets[run])]
    tests = [ev for ev in evals if ev.test_set != "val"]
    P.refuse_validation_as_test(tests)
    rows = build_rows(choices, tests, generative, c.n_boot, c.margins, c.adjust)
    curve = refinement_rows(evals, generative)
    out = c.out or c.layout.comparison(c.sweep)
    commits = {r: _run_commit(r) for r in runs.values()}  # each run's record read once
    header = (f"# segflow comparison: {c.sweep}\n\nCommit `{_commit()}`; hardware: {hardware()}. "
              f"Command:\n\n"
              f"```bash\n{_command(c)}\n```\n\nSettings chosen on the val split (`--select "
              f"{c.select}`: {P.SELECTION_RULES[c.select]}, within each budget: NFE per image, or "
              f"counted GFLOPs per image with every pass, view, tile and prior pass), then tested "
              f"once. "
              f"{protocol_notes(rows, c.margins, c.adjust)} Runs (trained at commit):\n\n"
              + "".join(f"- {m} seed {s}: `{_shown(r)}` ({commits[r]})\n"
                        for (m, s), r in runs.items())
              + _commit_warning(commits.values()))
    tables = markdown(rows) + (f"\n{refinement_markdown(curve)}" if curve else "")
    write_report(out, rows, header, tables)
    write_refinement(out, curve)
    if c.into is not None:
        update_section(c.into, c.sweep, f"{header.replace('# segflow comparison', '### Comparison', 1)}"
                       f"\n{tables}")
    print(f"\n{tables}\ncomparison of {len(runs)} runs written to {out}", flush=True)
    return out
