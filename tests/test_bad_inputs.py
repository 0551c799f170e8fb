"""Bad inputs and faults, table-driven: every case gives its exit code, one sentence with a
phrase, and leaves what the user had in place (nothing lost, nothing overwritten).

Each case is ``(id, action, expected exit code, phrase in the message, paths that must
still exist afterwards)``; actions run in-process through the entry points' own error
handling (:func:`segflow.infra.errors.exit_on_user_error`, the Hydra resolvers that choose
folders, ``segflow.prepare.main``, ``segflow.report.main``), so the whole table takes
seconds; one test launches two real trainings in the same second.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import segflow
from segflow.engine.evaluation import evaluate
from segflow.infra.atomic import AtomicCheckpointIO, checkpoint_problem
from segflow.infra.commands import open_key_overrides
from segflow.infra.errors import exit_on_user_error
from segflow.runs.layout import claim_dir

from conftest import CONF, ROOT, TINY, run_dirs

log = logging.getLogger("segflow.test_bad_inputs")


@dataclass
class Case:
    id: str
    action: Callable[[Path], object]  # gets a fresh work folder
    code: int
    phrase: str
    keep: list[str] = field(default_factory=list)  # paths (relative to the work folder)
    absent: list[str] = field(default_factory=list)  # paths that must not have been created


def run_case(case: Case, work: Path, capsys, caplog) -> tuple[int, str]:
    """Run the action as an entry point would: (exit code, the message shown)."""
    caplog.clear()
    code = 0
    with caplog.at_level(logging.WARNING):
        try:
            with exit_on_user_error(log):
                result = case.action(work)
            if isinstance(result, int):  # argparse-style mains return their exit code
                code = result
        except SystemExit as exc:
            code = int(exc.code or 0)
    out = capsys.readouterr()
    message = "\n".join([out.err, out.out, *(r.getMessage() for r in caplog.records)])
    return code, message


def check_case(case: Case, work: Path, capsys, caplog) -> None:
    code, message = run_case(case, work, capsys, caplog)
    if os.environ.get("SEGFLOW_CASE_LOG"):  # the list of cases with their outcome, for docs
        shown = [ln for ln in message.splitlines() if case.phrase and case.phrase in ln]
        with open(os.environ["SEGFLOW_CASE_LOG"], "a") as f:
            f.write(json.dumps({"case": case.id, "exit": code,
                                "message": (shown or [""])[0].strip()}) + "\n")
    assert code == case.code, f"{case.id}: exit {code}, expected {case.code}: {message[-1500:]}"
    assert case.phrase in message, f"{case.id}: {case.phrase!r} not in {message[-1500:]!r}"
    assert "Traceback" not in message, case.id
    for rel in case.keep:
        assert (work / rel).exists(), f"{case.id}: {rel} was lost"
    for rel in case.absent:
        assert not (work / rel).exists(), f"{case.id}: {rel} was created"


# -- helpers ----------------------------------------------------------------------------

def _compose(name: str, overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=hydra)


def _write_images(folder: Path, n: int, size: int = 32, seed: int = 0, ext: str = ".png") -> None:
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True, exist_ok=True)
    (folder / "label").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (rng.random((size, size)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / "image" / f"{i:03d}{ext}"), img)
        cv2.imwrite(str(folder / "label" / f"{i:03d}.png"), (img > 128).astype(np.uint8) * 255)


def _dataset(root: Path, ext: str = ".png") -> Path:
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        _write_images(root / split, n, ext=ext, seed=len(split))
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# -- 1. config values: one sentence naming key, value and what is allowed ----------------

def _train_cfg(*overrides: str):
    def action(work: Path):
        from segflow.infra.validate import validate_train

        validate_train(_compose("train", list(overrides)))
    return action


CONFIG_CASES = [
    Case("max_epochs=abc", _train_cfg("trainer.max_epochs=abc"), 2,
         "trainer.max_epochs=abc is not valid: trainer.max_epochs must be a whole number"),
    Case("max_epochs=0", _train_cfg("trainer.max_epochs=0"), 2, "trainer.max_epochs=0 trains nothing"),
    Case("train_bs=0", _train_cfg("data.train_bs=0"), 2, "data.train_bs=0 is not valid"),
    Case("num_samples_per_image=0", _train_cfg("data.num_samples_per_image=0"), 2,
         "data.num_samples_per_image=0 is not valid"),
    Case("image_size=0", _train_cfg("data.image_size=0"), 2,
         "data.image_size=0 is not valid: data.image_size must be a whole number of pixels"),
    Case("gray_from=blue", _train_cfg("data=synthetic_octa", "data.gray_from=blue"), 2,
         "data.gray_from=blue is not valid: data.gray_from must be luma"),
    Case("channels=2", _train_cfg("data.channels=2"), 2, "data.channels=2 is not valid"),
    Case("learning_rate=-1", _train_cfg("model.learning_rate=-1"), 2,
         "model.learning_rate=-1 is not valid: model.learning_rate must be a number > 0"),
    Case("precision=8", _train_cfg("trainer.precision=8"), 2, "trainer.precision=8 is not valid"),
    Case("num_workers=-1", _train_cfg("data.num_workers=-1"), 2, "data.num_workers=-1 is not valid"),
    Case("accumulate=0", _train_cfg("trainer.accumulate_grad_batches=0"), 2,
         "trainer.accumulate_grad_batches=0 is not valid"),
    Case("seed=abc", _train_cfg("seed=abc"), 2, "seed=abc is not valid"),
    Case("valid config", _train_cfg("trainer.max_epochs=3", "data.train_bs=2"), 0, ""),
]


# -- 2. names that become paths, folders chosen before any file is written --------------

def _run_dir(*overrides: str, key: str = "hydra.run.dir"):
    def action(work: Path):
        cfg = _compose("train", [f"paths.output_root={work / 'outputs'}", *overrides], hydra=True)
        return str(OmegaConf.select(cfg, key)) and 0
    return action


NAME_CASES = [
    Case("experiment_name=../../x", _run_dir("experiment_name=../../x"), 2,
         "experiment_name='../../x' cannot be a folder name", absent=["x", "outputs/runs"]),
    Case("experiment_name=''", _run_dir("experiment_name=''"), 2, "experiment_name='' is empty",
         absent=["outputs/runs"]),
    Case("experiment_name=a/b", _run_dir("experiment_name=a/b"), 2, "use e.g. experiment_name=a_b",
         absent=["outputs/runs"]),
    Case("sweep_name=..", _run_dir("sweep_name=..", key="hydra.sweep.dir"), 2,
         "sweep_name='..' cannot be a folder name", absent=["outputs/multirun"]),
    Case("experiment_name=ok", _run_dir("experiment_name=ok"), 0, "", keep=["outputs/runs/ok"]),
]


def _read_only_output_root(work: Path):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(work / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    Path.mkdir = mkdir  # type: ignore[method-assign]
    try:
        return _run_dir(f"paths.output_root={work / 'ro'}")(work)
    finally:
        Path.mkdir = real_mkdir  # type: ignore[method-assign]


def _disk_full_while_writing(work: Path):
    from segflow.infra.atomic import write_json

    write_json(work / "metrics.json", {"dice": 0.5})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "metrics.json"))

    real = os.fsync
    os.fsync = full
    try:
        write_json(work / "metrics.json", {"dice": 0.9})
    finally:
        os.fsync = real


DISK_CASES = [
    Case("read-only output folder", _read_only_output_root, 2,
         "the file system is read-only; choose a writable place"),
    Case("disk full while writing metrics.json", _disk_full_while_writing, 2,
         "metrics.json: the disk is full", keep=["metrics.json"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES + NAME_CASES + DISK_CASES, ids=lambda c: c.id)
def test_config_names_and_disk(case, tmp_path, capsys, caplog):
    check_case(case, tmp_path, capsys, caplog)
    if case.id.startswith("disk full"):  # the earlier complete file is still there, whole
        assert json.loads((tmp_path / "metrics.json").read_text()) == {"dice": 0.5}
        assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_claimed_folders_are_unique_and_atomic(tmp_path):
    first, second, third = (claim_dir(tmp_path / "runs" / "exp" / "t") for _ in range(3))
    assert [p.name for p in (first, second, third)] == ["t", "t_1", "t_2"]


# -- 3. checkpoints ---------------------------------------------------------------------

def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"\0" * 100)  # part of the new file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before and checkpoint_problem(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.ckpt"]  # no temporary left
    assert torch.load(path, weights_only=True)["epoch"] == 1


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval", "predict", "report*"))
    return dest


def test_damaged_checkpoints_and_resume_auto(tiny_runs, tmp_path, capsys, caplog):
    from segflow.runs.auto_resume import find_last_checkpoint, fingerprint

    run = tiny_runs.get("unet")
    old = _copy_run(run, tmp_path / "outputs" / "runs" / "exp" / "old")
    new = _copy_run(run, tmp_path / "outputs" / "runs" / "exp" / "new")
    _truncate(new / "checkpoints" / "last.ckpt")
    _truncate(new / "checkpoints" / "best.ckpt", 0.9)
    now = time.time()
    os.utime(old / "checkpoints" / "last.ckpt", (now - 100, now - 100))
    cfg = OmegaConf.load(old / ".hydra" / "config.yaml")
    cfg.experiment_name = "exp"
    for r in (old, new):
        OmegaConf.save(cfg, r / ".hydra" / "config.yaml")
    with caplog.at_level(logging.WARNING):
        found = find_last_checkpoint(tmp_path / "outputs", "exp", fingerprint(cfg))
    assert found == old / "checkpoints" / "last.ckpt"  # the newest intact one
    assert f"skipping {new / 'checkpoints' / 'last.ckpt'}" in caplog.text

    # A run still training (its RUNNING lock names a live process) is never forked; a lock
    # whose process is gone (kill -9) does not count.
    import socket
    import subprocess
    import sys

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (old / "RUNNING").write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname()}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert find_last_checkpoint(tmp_path / "outputs", "exp", fingerprint(cfg)) is None
        assert f"skipping {old / 'checkpoints' / 'last.ckpt'}: its run is still training (pid {alive.pid}" in caplog.text
    finally:
        alive.kill()
        alive.wait()
    assert find_last_checkpoint(tmp_path / "outputs", "exp", fingerprint(cfg)) == old / "checkpoints" / "last.ckpt"
    (old / "RUNNING").unlink()

    cases = [
        Case("eval on a truncated best.ckpt", lambda w: evaluate(_compose(
            "eval", [f"run_dir={new}", "trainer=cpu", f"output_dir={w / 'ev'}"])), 2,
            f"checkpoint {new / 'checkpoints' / 'best.ckpt'} is truncated",
            keep=["outputs/runs/exp/new/checkpoints/best.ckpt"]),
        Case("train from a truncated ckpt_path", lambda w: AtomicCheckpointIO().load_checkpoint(
            new / "checkpoints" / "last.ckpt"), 2, "last.ckpt is truncated or not a checkpoint"),
        Case("eval with model.net.* that do not fit", lambda w: evaluate(_compose(
            "eval", open_key_overrides([f"run_dir={old}", "trainer=cpu", "model.net.base_channels=8",
                                        f"output_dir={w / 'ev2'}"]))), 2,
            "do not fit the model built with the overrides (model.net.base_channels=8)"),
    ]
    for case in cases:
        check_case(case, tmp_path, capsys, caplog)


def test_atomic_checkpoint_io_is_what_training_uses():
    from segflow.engine.training import build_trainer

    trainer = build_trainer(_compose("train", ["debug=default"]), logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# -- 4. evaluation folders --------------------------------------------------------------

def test_eval_folders_tell_the_data_apart_and_never_replace(tiny_runs, tmp_path, capsys, caplog):
    run = tiny_runs.get("unet")
    cfg_a = _compose("eval", [f"run_dir={run}", "trainer=cpu", "save_images=false",
                              f"output_dir={tmp_path / 'ev'}"])
    evaluate(cfg_a)
    first = (tmp_path / "ev" / "test" / "metrics.json").read_text()
    split_dir = Path(json.loads(first)["split_dir"])
    root_b = tmp_path / "copy"
    shutil.copytree(split_dir.parent, root_b)
    evaluate(cfg_a)  # the same evaluation again: a new folder
    evaluate(_compose("eval", [f"run_dir={run}", "trainer=cpu", "save_images=false",
                               f"output_dir={tmp_path / 'ev'}", f"++data.root={root_b}"]))
    names = sorted(p.name for p in (tmp_path / "ev").iterdir())
    (other,) = set(names) - {"test", "test_1"}
    assert len(names) == 3 and other.startswith("synthetic_xca-") and other.endswith("_test"), names
    assert (tmp_path / "ev" / "test" / "metrics.json").read_text() == first
    result = json.loads((tmp_path / "ev" / other / "metrics.json").read_text())
    assert Path(result["split_dir"]).resolve() == (root_b / split_dir.name).resolve()

    missing = Case("eval run_dir=<missing>", lambda w: str(OmegaConf.select(_compose(
        "eval", [f"run_dir={w / 'nope' / 'run'}"], hydra=True), "hydra.run.dir")) and 0, 2,
        f"run_dir={tmp_path / 'nope' / 'run'} does not exist", absent=["nope"])
    check_case(missing, tmp_path, capsys, caplog)


def test_eval_with_an_empty_run_dir_creates_nothing(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty run_dir must not become a folder under the cwd
    empty = Case("eval run_dir=''", lambda w: str(OmegaConf.select(_compose(
        "eval", ["run_dir="], hydra=True), "hydra.run.dir")) and 0, 2,
        "run_dir is empty", absent=["eval", "logs"])
    check_case(empty, tmp_path, capsys, caplog)


# -- 5. predict -------------------------------------------------------------------------

def _predict(work: Path, run: Path, inp: str, *extra: str):
    from segflow.inference.prediction import predict_folder
    from segflow.runs.layout import prediction_dir

    cfg = _compose("predict", open_key_overrides([f"run_dir={run}", f"input_dir={work / inp}",
                                                  "device=cpu", *extra]))
    out = prediction_dir(cfg.get("output_dir"), cfg.run_dir, cfg.input_dir, cfg.get("overwrite", False))
    return predict_folder(cfg, out) and 0


def _predict_dir(run: Path, inp: Path):
    """The output folder as the entry point chooses it (Hydra's run dir resolver)."""

    inp.mkdir(exist_ok=True) if inp.name == "out_empty" else None
    cfg = _compose("predict", [f"run_dir={run}", f"input_dir={inp}"], hydra=True)
    return str(OmegaConf.select(cfg, "hydra.run.dir")) and 0


def test_predict_refuses_to_lose_or_overwrite(tiny_runs, tmp_path, capsys, caplog):
    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    for site in ("siteA", "siteB"):
        _write_images(tmp_path / site, 2, size=40)
    users_mask = tmp_path / "siteA" / "image" / "000_mask.png"
    users_mask.write_bytes(b"the user's own file")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not an image")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "001_mask.png").write_bytes(b"an earlier prediction")
    cases = [
        Case("predict input_dir=<missing> (folder chosen by Hydra)", lambda w: _predict_dir(
            run, w / "nope"), 2, "is not a folder; point it at a folder of images",
            absent=["run/predict"]),
        Case("predict empty input_dir (folder chosen by Hydra)", lambda w: _predict_dir(
            run, w / "out_empty"), 2, "no images in", absent=["run/predict"]),
        Case("predict output_dir=input_dir", lambda w: _predict(
            w, run, "siteA/image", f"output_dir={w / 'siteA' / 'image'}"), 2,
            "is inside input_dir", keep=["siteA/image/000_mask.png"]),
        Case("predict output_dir inside input_dir", lambda w: _predict(
            w, run, "siteA", f"output_dir={w / 'siteA' / 'pred'}"), 2, "is inside input_dir",
            absent=["siteA/pred"]),
        Case("predict over earlier outputs", lambda w: _predict(
            w, run, "siteB/image", f"output_dir={w / 'out'}"), 2,
            "already holds 001_mask.png; choose a new output_dir", keep=["out/001_mask.png"]),
        Case("predict nothing readable", lambda w: _predict(w, run, "bad"), 2,
             "none of the 1 images in"),
        Case("predict overwrite=true", lambda w: _predict(
            w, run, "siteB/image", f"output_dir={w / 'out'}", "overwrite=true"), 0, ""),
        Case("predict siteA default folder", lambda w: _predict(w, run, "siteA/image"), 0, ""),
        Case("predict siteB default folder", lambda w: _predict(w, run, "siteB/image"), 0, ""),
    ]
    for case in cases:
        check_case(case, tmp_path, capsys, caplog)
    assert users_mask.read_bytes() == b"the user's own file"
    assert (tmp_path / "out" / "001_mask.png").read_bytes() != b"an earlier prediction"  # overwrite
    folders = sorted(p.name for p in (run / "predict").iterdir())
    # one folder per input folder although both are called "image"
    assert len([f for f in folders if f.startswith("image-")]) == 2, folders


# -- 6. prepare -------------------------------------------------------------------------

def _prep(*argv: str):
    def action(work: Path):
        from segflow.prepare import main

        return main([a.replace("{w}", str(work)) for a in argv])
    return action


def test_prepare_only_replaces_what_it_wrote(tmp_path, capsys, caplog):
    src = _dataset(tmp_path / "src")
    jpg_src = _dataset(tmp_path / "jsrc", ext=".jpg")
    _truncate(jpg_src / "test" / "image" / "000.jpg")
    png_src = _dataset(tmp_path / "psrc")
    _truncate(png_src / "train" / "label" / "001.png")
    edited = tmp_path / "dest" / "train" / "label" / "000.png"

    def edit_and_touch(w: Path):
        cv2.imwrite(str(edited), np.full((32, 32), 255, np.uint8))
        os.utime(src / "train" / "image" / "002.png")  # the source changed: a rebuild
        return _prep("folder", "{w}/src", "{w}/dest")(w)

    cases = [
        Case("prepare folder", _prep("folder", "{w}/src", "{w}/dest"), 0, "written"),
        Case("prepare --force with a user file", lambda w: (
            (w / "dest" / "notes.txt").write_text("mine"), _prep(
                "folder", "{w}/src", "{w}/dest", "--force")(w))[1], 2,
            "holds files segflow did not write: notes.txt", keep=["dest/notes.txt"]),
        Case("prepare after a user edit", edit_and_touch, 0, "kept 1 edited file(s)",
             keep=["dest/notes.txt"]),
        Case("prepare another kind into it", _prep("drive", "{w}/src", "{w}/dest"), 2,
             "holds a folder dataset prepared from"),
        Case("prepare truncated JPEG", _prep("folder", "{w}/jsrc", "{w}/jdest"), 2,
             "000.jpg is damaged (libjpeg: Premature end of JPEG file)", absent=["jdest"]),
        Case("prepare --check truncated PNG", _prep("folder", "{w}/psrc", "--check"), 2,
             "001.png is damaged (truncated PNG"),
        Case("prepare into a foreign folder", lambda w: (
            (w / "mine").mkdir(), (w / "mine" / "a.txt").write_text("x"),
            _prep("folder", "{w}/src", "{w}/mine")(w))[2], 2,
            "is not a segflow-prepared dataset", keep=["mine/a.txt"]),
    ]
    for case in cases:
        check_case(case, tmp_path, capsys, caplog)
    assert cv2.imread(str(edited), cv2.IMREAD_UNCHANGED).min() == 255  # the edit survived
    import fcntl

    with open(tmp_path / ".dest.lock", "w") as held:  # another prepare is writing dest
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242")
        held.flush()
        check_unchanged(Case("prepare while another prepare writes it", _prep(
            "folder", "{w}/src", "{w}/dest", "--force"), 2,
            "dest is being prepared by another segflow.prepare (pid 4242); wait for it"),
            tmp_path, capsys, caplog, under="dest")
    assert (tmp_path / "dest" / "notes.txt").read_text() == "mine"


# -- 7. strict decoding at set-up (training and predict read through the same decoder) ---

def test_damaged_test_label_is_found_at_set_up(tmp_path, capsys, caplog):
    from segflow.data import SegDataModule

    root = _dataset(tmp_path / "data")
    _truncate(root / "test" / "label" / "000.png")
    dm = SegDataModule(root=str(root), train_dir=str(root / "train"), val_dir=str(root / "val"),
                       test_dir=str(root / "test"), fov_dir=None, image_size=16, num_workers=0)
    case = Case("truncated test label at fit set-up", lambda w: dm.setup("fit"), 2,
                f"{root / 'test' / 'label' / '000.png'} is damaged (truncated PNG")
    check_case(case, tmp_path, capsys, caplog)


# -- 8. report --------------------------------------------------------------------------

def test_report_skips_a_damaged_metrics_json(tiny_runs, tmp_path, capsys, caplog):
    from segflow.report import main

    good = _copy_run(tiny_runs.get("unet"), tmp_path / "runs" / "good")
    bad = _copy_run(tiny_runs.get("unet"), tmp_path / "runs" / "bad")
    (bad / "metrics.json").write_text('{"test": {"dice": 0.')
    cases = [
        Case("report with one corrupt metrics.json", lambda w: main([str(w / "runs")]), 0,
             f"skipped {bad / 'metrics.json'}: not readable JSON", keep=["runs/report/report.md"]),
        Case("report again: new folder", lambda w: main([str(w / "runs")]), 0, "",
             keep=["runs/report_1/report.md", "runs/report/report.md"]),
        Case("report of only corrupt runs", lambda w: (
            (good / "metrics.json").write_text("not json"), main([str(w / "runs")]))[1], 2,
            "has a readable metrics.json"),
    ]
    for case in cases:
        check_case(case, tmp_path, capsys, caplog)


# -- 9. two real trainings started in the same second -----------------------------------

def test_two_runs_started_in_the_same_second_get_two_folders(workdir):
    import subprocess
    import sys

    args = [*TINY, "debug=default", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "test_after_fit=false", "experiment_name=same"]
    env = {**os.environ, "SEGFLOW_OUTPUT_DIR": str(workdir / "outputs"),
           "SEGFLOW_DATA_DIR": str(workdir / "data"), "PYTHONPATH": str(ROOT),
           "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    # the same timestamp for both, as when two processes start in the same second
    stamp = "hydra.run.dir='${segflow_run_dir:${paths.output_root},same,2026-01-01_00-00-00}'"
    procs = [subprocess.Popen([sys.executable, "-m", "segflow.train", *args, stamp], cwd=workdir,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    runs = run_dirs(workdir)
    assert sorted(r.name for r in runs) == ["2026-01-01_00-00-00", "2026-01-01_00-00-00_1"]
    for r in runs:  # each its own checkpoints, one event file each
        assert sorted(p.name for p in (r / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        assert len(list(r.rglob("events.out.tfevents.*"))) == 1


# -- 10. silently odd settings are said ------------------------------------------------

def test_log_image_names_naming_no_image_is_a_warning(caplog):
    from types import SimpleNamespace

    from segflow.engine.callbacks import ValImageLogger

    samples = [SimpleNamespace(name=n) for n in ("0006.png", "0007.png")]
    trainer = SimpleNamespace(global_rank=0, datamodule=SimpleNamespace(samples=lambda s: samples))
    module = SimpleNamespace(log_image_names=["0006", "nope.png"], log_image_enabled=True)
    with caplog.at_level(logging.WARNING):
        ValImageLogger().on_fit_start(trainer, module)
    assert "model.log_image_names: nope.png is not among the 2 validation images" in caplog.text
    caplog.clear()
    module.log_image_names = ["0006.png"]
    ValImageLogger().on_fit_start(trainer, module)
    assert not caplog.text


def test_predict_bad_device_is_one_sentence(capsys, caplog, tmp_path):
    from segflow.inference.window import resolve_device as pick_device

    case = Case("predict device=gpu0", lambda w: pick_device("gpu0"), 2,
                "device=gpu0 is not a device; use auto, cpu, cuda or cuda:<index>")
    check_case(case, tmp_path, capsys, caplog)


# -- 11. failed commands leave nothing behind, refused folders stay as they were ---------

def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its bytes (files) or "dir": the folder tree to compare."""
    import hashlib

    return {p.relative_to(root).as_posix(): ("dir" if p.is_dir() else
                                             hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def check_unchanged(case: Case, work: Path, capsys, caplog, under: str = "") -> None:
    """``check_case`` plus: the tree under ``work/under`` is the same before and after."""
    root = work / under
    before = _tree(root) if root.exists() else None
    check_case(case, work, capsys, caplog)
    after = _tree(root) if root.exists() else None
    assert after == before, f"{case.id}: the folder changed: {set((after or {}).items()) ^ set((before or {}).items())}"


def test_failed_training_leaves_no_run_folder(workdir):
    from conftest import run_entry

    # A value only the run itself finds wrong (a type inside the model config), one in the
    # trainer validation, and a dataset with no images: no run folder is left behind.
    empty = workdir / "empty"
    for split in ("train", "val", "test"):
        (empty / split / "image").mkdir(parents=True)
        (empty / split / "label").mkdir(parents=True)
    for args, phrase in (
            (["model.net.base_channels=sixteen"], "model.net.base_channels='sixteen' is not valid"),
            (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
            (["data=folder", f"data.root={empty}"], "no images")):
        tiny = [t for t in TINY if not (args[0].startswith("data=") and t.startswith("data.synthetic"))]
        proc = run_entry("segflow.train", [*tiny, "debug=default", *args], workdir)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and phrase in out and "Traceback" not in out, out[-2000:]
        assert run_dirs(workdir) == [], args
        assert [p for p in (workdir / "outputs").rglob("*") if p.is_file()] == [], args


def test_report_skips_failed_runs_and_wrong_shapes(tiny_runs, tmp_path, capsys, caplog):
    from segflow.report import main
    from segflow.runs.failed import mark_failed

    good = _copy_run(tiny_runs.get("unet"), tmp_path / "runs" / "good")
    failed = _copy_run(tiny_runs.get("unet"), tmp_path / "runs" / "failed")
    mark_failed(failed, "another DDP rank died or stopped answering")
    shape = _copy_run(tiny_runs.get("unet"), tmp_path / "shape" / "wrong")
    (shape / "metrics.json").write_text('{"test": [0.5]}')
    cases = [
        Case("report skips a run marked FAILED", lambda w: main([str(w / "runs")]), 0,
             f"skipped {failed}: the run is marked FAILED (another DDP rank died",
             keep=["runs/report/report.md"]),
        Case("report of a wrong-shaped metrics.json", lambda w: main([str(w / "shape")]), 2,
             f'skipped {shape / "metrics.json"}: "test" is list [0.5], not an object of metric '
             f"names to numbers", absent=["shape/report"]),
    ]
    for case in cases:
        check_case(case, tmp_path, capsys, caplog)
    text = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "good" in text and "failed" not in text
    assert good.is_dir()


def test_predict_refusal_changes_nothing_in_the_used_folder(tiny_runs, tmp_path, capsys, caplog):
    from conftest import run_entry

    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    _write_images(tmp_path / "site", 2, size=40)
    out = tmp_path / "out"
    args = [f"run_dir={run}", f"input_dir={tmp_path / 'site' / 'image'}", f"output_dir={out}",
            "device=cpu"]
    first = run_entry("segflow.predict", args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(out)
    assert ".hydra/overrides.yaml" in before and "000_mask.png" in before
    again = run_entry("segflow.predict", [*args, "model.threshold=0.3"], tmp_path)
    assert again.returncode == 2 and "already holds" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stdout + again.stderr
    assert _tree(out) == before  # .hydra/overrides.yaml still describes the masks beside it


def _predict_guarded(work: Path, run: Path, inp: str):
    """As segflow.predict's entry point: a failure removes the folder it had claimed."""
    from segflow.inference.prediction import predict_folder
    from segflow.runs.failed import failed_run_guard
    from segflow.runs.layout import prediction_dir

    cfg = _compose("predict", [f"run_dir={run}", f"input_dir={work / inp}", "device=cpu"])
    out = prediction_dir(None, cfg.run_dir, cfg.input_dir)
    with failed_run_guard(out, prune_up_to=run):
        return predict_folder(cfg, out) and 0


def test_nan_pixels_and_nan_outputs_are_named(tiny_runs, tmp_path, capsys, caplog):
    from segflow.data.io import read_image
    from segflow.runs.failed import failed_claims

    nan_dir = tmp_path / "nan" / "image"
    nan_dir.mkdir(parents=True)
    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    img[5:15, 5:15] = np.nan
    assert cv2.imwrite(str(nan_dir / "a.tif"), img)
    inf = img.copy()
    inf[:] = np.inf
    assert cv2.imwrite(str(nan_dir / "b.tif"), inf)
    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    broken = _copy_run(tiny_runs.get("unet"), tmp_path / "broken")
    ckpt = torch.load(broken / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    for value in ckpt["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))  # weights that diverged
    torch.save(ckpt, broken / "checkpoints" / "best.ckpt")

    def eval_broken(w: Path):
        with failed_claims("eval"):  # as segflow.eval's entry point
            evaluate(_compose("eval", [f"run_dir={broken}", "trainer=cpu", f"output_dir={w / 'ev'}"]))

    cases = [
        Case("read a float TIFF with a NaN patch", lambda w: read_image(nan_dir / "a.tif"), 2,
             f"{nan_dir / 'a.tif'} has 100 NaN pixel values of 1600; segflow does not guess them"),
        Case("predict a folder of NaN / Inf images", lambda w: _predict_guarded(w, run, "nan/image"), 2,
             "b.tif has 1600 Inf pixel values of 1600"),
        Case("eval a model whose output is NaN", eval_broken, 2,
             "the network output for 0008.png is not finite (4096 NaN values of 4096): stopped",
             absent=["ev/test/metrics.json", "ev/test"]),
    ]
    api = segflow.load_run(run, device="cpu")
    nan_array, inf_array = img.copy(), np.random.default_rng(1).random((32, 32)).astype("f4")
    inf_array[3, 4] = np.inf
    cases += [
        Case("Run.predict on an array with NaN", lambda w: api.predict(nan_array), 2,
             "the image array has 100 NaN values of 1600; segflow does not guess them"),
        Case("Run.predict on a list holding an Inf tensor", lambda w: api.predict(
            [img[20:28, 20:28], torch.from_numpy(inf_array)]), 2, "item 1 of the list has 1 Inf values"),
        Case("Run.predict_tensor with NaN", lambda w: api.predict_tensor(
            torch.full((1, 1, 8, 8), float("nan"))), 2,
             "the image tensor given to Run.predict_tensor has 64 NaN values of 64"),
    ]
    for case in cases:
        check_unchanged(case, tmp_path, capsys, caplog, under="run")


def test_a_diverging_run_stops_at_once_with_one_sentence(workdir):
    from conftest import run_entry

    # lr=1e12: the weights are NaN after the first steps; the loss (or the validation
    # output) is checked before those weights are used or saved.
    proc = run_entry("segflow.train", [*TINY, "debug=default", "trainer.max_epochs=2",
                                       "model.learning_rate=1e12"], workdir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "training diverged at step " in out and "lower model.learning_rate (now 1e+12" in out, out[-2000:]
    assert "trainer.precision=32-true (full precision" in out and "Traceback" not in out and "bincount" not in out
    (run,) = run_dirs(workdir)  # kept: its log says how far it got
    reason = (run / "FAILED").read_text()
    assert reason.startswith("training diverged at step"), reason
    assert not (run / "RUNNING").exists()  # the lock goes with the process
    for ckpt in run.rglob("*.ckpt"):  # any checkpoint kept holds finite weights only
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_one_sentence_each(tiny_runs, tmp_path, capsys, caplog, monkeypatch):
    from segflow.infra.config_files import check_config_dirs

    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    _write_images(tmp_path / "site", 1, size=40)
    exp = tmp_path / "conf" / "experiment"
    exp.mkdir(parents=True)
    (exp / "mine.yaml").write_text("# @package _global_\nmodel:\n  net:\n   base_channels: [16\n")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(
        str(tmp_path / "ro")) else real_access(p, mode, **k))
    (tmp_path / "ro").mkdir()

    def predict_dir(w: Path, *extra: str):
        cfg = _compose("predict", [f"run_dir={run}", f"input_dir={w / 'site' / 'image'}", *extra],
                       hydra=True)
        return str(OmegaConf.select(cfg, "hydra.run.dir")) and 0

    def eval_name(w: Path):
        return evaluate(_compose("eval", open_key_overrides([
            f"run_dir={run}", "trainer=cpu", "data.name=../../evil", f"output_dir={w / 'ev'}"])))

    cases = [
        Case("predict into a read-only output_dir", lambda w: predict_dir(
            w, f"output_dir={w / 'ro'}"), 2, f"cannot create the output folder {tmp_path / 'ro'}: "
            f"permission denied"),
        Case("YAML syntax error in a --config-dir experiment", lambda w: check_config_dirs(
            ["--config-dir", str(w / "conf"), "experiment=mine"]), 2,
            f"{exp / 'mine.yaml'} line 5, column 1: the YAML cannot be read"),
        Case("experiment value of the wrong type", _train_cfg("model.net.base_channels=sixteen"), 2,
             "model.net.base_channels='sixteen' is not valid: model.net.base_channels must be a "
             "whole number"),
        Case("eval data.name=../../evil", eval_name, 2,
             "data.name='../../evil' cannot be a folder name", absent=["ev"]),
    ]
    for case in cases:
        check_unchanged(case, tmp_path, capsys, caplog, under="run")
    assert not list(tmp_path.rglob("*evil*"))


def test_every_preset_passes_the_type_check():
    from segflow.infra.config_files import check_target_types

    for kind in ("model", "experiment"):
        for preset in sorted((CONF / kind).glob("*.yaml")):
            cfg = _compose("train", [f"{kind}={preset.stem}"])
            check_target_types(cfg.model, "model")


def test_make_compare_with_empty_models_is_one_sentence():
    import subprocess

    out = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "compare", "MODELS=", "PY=python3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "MODELS is empty: name the models to compare" in out.stderr


def test_failed_run_guard_removes_only_a_users_failed_start(tmp_path):
    import sys

    from segflow.infra.errors import ConfigError
    from segflow.runs.failed import failed_reason, failed_run_guard

    def start(name: str, *files: str) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / "train.log").write_text("log")
        for f in files:
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            (folder / f).write_text("x")
        return folder

    cases = [  # (folder, error, files beside Hydra's, primary, kept with this FAILED reason)
        ("typo", ConfigError("model.x=1 is not valid"), (), True, None),
        ("crash", RuntimeError("boom\nmore"), (), True, "RuntimeError: boom"),
        ("trained", ConfigError("data gone"), ("checkpoints/last.ckpt",), True, "data gone"),
        ("background", ConfigError("bad value"), ("console.log",), True, "bad value"),
        ("rank1", ConfigError("bad value"), (), False, "bad value"),
    ]
    for name, exc, files, primary, kept in cases:
        folder = start(name, *files)
        with pytest.raises(type(exc)), failed_run_guard(folder, primary=primary):
            raise exc
        assert folder.exists() == (kept is not None), name
        if kept is not None:
            assert failed_reason(folder) == kept, name
    stopped = start("stopped", "checkpoints/last.ckpt")  # SIGTERM's clean stop: not a failure
    with pytest.raises(SystemExit), failed_run_guard(stopped, primary=True):
        sys.exit(143)
    assert not (stopped / "FAILED").exists()


# -- interpolations and sweeps: every job checked before any folder exists ---------------

def _train_main(*argv: str):
    def action(work: Path):
        import sys

        from segflow.train import main

        old = sys.argv
        sys.argv = ["segflow.train", f"paths.output_root={work / 'outputs'}", *argv]
        try:
            return main()
        finally:
            sys.argv = old
    return action


INTERPOLATION_CASES = [
    Case("+foo=${foo}", _train_main("+foo=${foo}"), 2,
         "foo=${foo} cannot be resolved (Recursive interpolation detected)", absent=["outputs"]),
    Case("data.root=${data.root}", _train_main("data=folder", "data.root=${data.root}"), 2,
         "data.root=${data.root} cannot be resolved (Recursive interpolation detected)",
         absent=["outputs"]),
    Case("data.root=${nosuch.key}", _train_main("data.root=${nosuch.key}"), 2,
         "data.root=${nosuch.key} cannot be resolved (Interpolation key 'nosuch.key' not found)",
         absent=["outputs"]),
    Case("experiment_name=${experiment_name}", _train_main("experiment_name=${experiment_name}"), 2,
         "experiment_name=${experiment_name} cannot be resolved", absent=["outputs"]),
    Case("a bad value reaching the model", _train_main("model.net.base_channels=sixteen"), 2,
         "model.net.base_channels='sixteen' is not valid", absent=["outputs"]),
]


@pytest.mark.parametrize("case", INTERPOLATION_CASES, ids=lambda c: c.id)
def test_interpolation_errors_before_any_folder(case, tmp_path, capsys, caplog):
    check_case(case, tmp_path, capsys, caplog)
    assert "exception formatting" not in capsys.readouterr().err


def test_a_sweep_is_checked_job_by_job_before_launch():
    from segflow.infra.precheck import compose_jobs
    from segflow.infra.validate import validate_train

    plan = compose_jobs(["-m", "model=unet,csnet", "model.learning_rate=0.001,bogus"],
                        "segflow.train", "conf", "train", validate_train)
    assert plan.multirun and [j.num for j in plan.jobs] == [0, 1, 2, 3]
    assert [j.num for j in plan.rejected] == [1, 3]
    assert plan.jobs[2].overrides == ["model=csnet", "model.learning_rate=0.001"]
    assert plan.rejected[0].error == ("model.learning_rate=bogus is not valid: "
                                      "model.learning_rate must be a number > 0")


# -- writers never overwrite: export into a used folder ------------------------------------

def _export(run: Path, out: Path, *extra: str):
    def action(work: Path):
        from segflow.inference.export import export_configured

        cfg = _compose("export", [f"run_dir={run}", f"output_dir={out}", *extra], hydra=True)
        folder = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        export_configured(cfg, folder)
        return 0
    return action


def test_export_never_overwrites(tiny_runs, tmp_path, capsys, caplog, monkeypatch):
    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    used = tmp_path / "d"
    used.mkdir()
    (used / "model.pt").write_text("keep")
    (used / "export.json").write_text("{}")
    (used / "notes.txt").write_text("mine")
    ro = tmp_path / "ro"
    ro.mkdir()
    check_unchanged(Case("export into a used folder", _export(run, used), 2,
                         f"output_dir={used} already holds model.pt, export.json; choose a new "
                         f"output_dir"), tmp_path, capsys, caplog, under="d")
    real_access = os.access
    with monkeypatch.context() as m:  # a read-only folder (as root sees one: os.access)
        m.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
        check_case(Case("export into a read-only folder", _export(run, ro), 2,
                        f"cannot create the output folder {ro}: permission denied"),
                   tmp_path, capsys, caplog)
    assert list(ro.iterdir()) == []
    check_case(Case("export overwrite=true", _export(run, used, "overwrite=true"), 0, ""),
               tmp_path, capsys, caplog)
    assert (used / "notes.txt").read_text() == "mine"  # not segflow's: left alone
    assert (used / "model.pt").read_bytes() != b"keep"
    assert json.loads((used / "export.json").read_text())["format"] == "torchscript"


def test_children_end_with_their_parent(tmp_path):
    import signal
    import subprocess
    import sys

    # A parent running a long child through run_child (as segflow.compare runs its
    # evaluations): SIGTERM to the parent reaches the child, and the parent exits 143.
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys; from segflow.infra.children import run_child; "
        f"sys.exit(run_child([sys.executable, '-c', {child!r}]))")],
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=20) == 128 + signal.SIGTERM
    for _ in range(100):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


def test_a_checkpoint_of_a_newer_or_another_segflow_is_named(tiny_runs, tmp_path, capsys, caplog):
    from segflow.infra.version import VERSION

    newer = _copy_run(tiny_runs.get("unet"), tmp_path / "newer")
    foreign = _copy_run(tiny_runs.get("unet"), tmp_path / "foreign")
    best = newer / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["segflow_version"] == VERSION  # every checkpoint says who wrote it
    ckpt["segflow_version"] = "9.0.0"
    torch.save(ckpt, best)
    ckpt = torch.load(foreign / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    ckpt.pop("segflow_version")
    ckpt["segflow_config"]["model"]["net"]["new_knob"] = 3  # a setting this segflow lacks
    torch.save(ckpt, foreign / "checkpoints" / "best.ckpt")
    for case in (
        Case("load a newer segflow's checkpoint", lambda w: segflow.load_run(newer), 2,
             f"{best} was written by segflow 9.0.0, newer than this segflow {VERSION}"),
        Case("load a checkpoint with an unknown setting", lambda w: segflow.load_run(foreign), 2,
             f"cannot be built by segflow {VERSION}: UNet.__init__() got an unexpected keyword "
             f"argument 'new_knob'; it was written by a segflow that recorded no version"),
        Case("resume a newer segflow's checkpoint", lambda w: __import__(
            "segflow.engine.training", fromlist=["x"]).resume_checkpoint(
            OmegaConf.create({"ckpt_path": str(newer / "checkpoints" / "best.ckpt"),
                              "paths": {"output_root": str(w / "outputs")}}),
            type("Child", (), {})()), 2, "was written by segflow 9.0.0"),
    ):
        check_case(case, tmp_path, capsys, caplog)


def test_file_names_that_are_not_utf8_reach_the_csv(tiny_runs, tmp_path, capsys, caplog):
    run = _copy_run(tiny_runs.get("unet"), tmp_path / "run")
    folder = tmp_path / "odd"
    folder.mkdir()
    img = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    raw = os.fsdecode(b"\xffa.png")  # the name as Python reads it from the folder
    assert cv2.imencode(".png", img)[0]
    (folder / raw).write_bytes(cv2.imencode(".png", img)[1].tobytes())
    check_case(Case("predict a file whose name is not UTF-8", lambda w: _predict(
        w, run, "odd", f"output_dir={w / 'out'}"), 0, ""), tmp_path, capsys, caplog)
    table = (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8")
    assert "\\xffa.png" in table, table  # its byte escaped, the row there
