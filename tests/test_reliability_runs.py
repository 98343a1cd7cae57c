"""Issue 10, items 2 (solver state), 4, 7 and 10 (run folders): snapshots are written whole
(under a hidden name, renamed), `--resume` falls back to the newest snapshot that loads and says
so, a damaged solver state is one line and run.json says "failed", a copied run folder resumes
on its own files, and a second writer of a run folder is refused. tools/train.py runs in a child
process (real Caffe is the default backend)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlbhc_caffe import proto
from dlbhc_caffe.fileio import output_lock

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = [pytest.param("caffe", marks=pytest.mark.caffe), "torch"]


def _train(root, out, backend, *extra):
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--bits", "12", "--net",
               "small", "--dataset", "digits", "--root", str(root), "--out", str(out),
               "--max-iter", "4", "--snapshot", "2", "--test-interval", "100", "--seed", "1",
               "--backend", backend, "--no-progress", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture
def run_folder(request, digits_data_root, tmp_path):
    backend = request.param
    if backend == "caffe":
        request.getfixturevalue("caffe")
    out = tmp_path / "runs" / "a"
    done = _train(digits_data_root, out, backend)
    assert done.returncode == 0, done.stderr[-2000:]
    return backend, out


def _one_error_line(done):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, \
        done.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("run_folder", BACKENDS, indirect=True)
def test_snapshots_are_whole_and_name_their_final_caffemodel(run_folder):
    backend, out = run_folder
    states = sorted(out.glob("*_iter_*.solverstate"))
    assert [s.name.rsplit("_iter_", 1)[1] for s in states] == ["2.solverstate", "4.solverstate"]
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name]
    for state in states:
        learned = Path(proto.read_solverstate(state).learned_net)
        assert learned == state.with_suffix(".caffemodel") and learned.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("run_folder", BACKENDS, indirect=True)
def test_resume_falls_back_to_the_newest_snapshot_that_loads(run_folder, digits_data_root):
    backend, out = run_folder
    latest = next(out.glob("*_iter_4.solverstate"))
    latest.write_bytes(latest.read_bytes()[:-7])
    done = _train(digits_data_root, out, backend, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout and "_iter_2.solverstate, the newest snapshot that " \
        "loads (skipped: " in done.stdout and "_iter_4.solverstate: " in done.stdout
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("run_folder", BACKENDS, indirect=True)
def test_short_history_blob_is_one_line_and_the_run_failed(run_folder, digits_data_root):
    backend, out = run_folder
    state_path = next(out.glob("*_iter_4.solverstate"))
    state = proto.read_solverstate(state_path)
    del state.history[0].data[-1]
    proto.write_binary(state, state_path)
    done = _train(digits_data_root, out, backend, "--resume", str(state_path))
    line = _one_error_line(done)
    assert f"{state_path}: history blob 0: shape" in line and "the file holds" in line
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("run_folder", BACKENDS, indirect=True)
def test_a_copied_run_resumes_on_its_own_files(run_folder, digits_data_root, tmp_path):
    backend, out = run_folder
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for latest in copy.glob("*_iter_4.*"):   # so the copy resumes from 2 and snapshots at 4
        latest.unlink()
    done = _train(digits_data_root, copy, backend, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    state = next(copy.glob("*_iter_4.solverstate"))
    assert Path(proto.read_solverstate(state).learned_net).parent == copy
    solver = proto.read_solver(copy / "solver.prototxt")
    assert Path(solver.snapshot_prefix).parent == copy and Path(solver.net).parent == copy


@pytest.mark.slow
def test_a_second_writer_of_a_run_folder_is_refused(digits_data_root, tmp_path):
    out = tmp_path / "runs" / "busy"
    with output_lock(out, "run folder"):
        done = _train(digits_data_root, out, "torch")
    line = _one_error_line(done)
    assert f"{out}: another process is writing this run folder" in line
    assert not out.exists()
