"""What a new user meets in the first hour: Ctrl-C and the commands printed after it, resuming
without repeating the net flags, a failed run's retry, and no noise in --help."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import unavailable
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "tools" / "train.py"
IN_CI = os.environ.get("CI", "").lower() == "true"
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def tool(*args, cwd=ROOT, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def shell(command, cwd, timeout=900):
    """`command` run by a shell exactly as printed (one thread a engine: the machine is shared)."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ONE_THREAD)


def interrupt_when(command, ready, cwd, env=None, sig=signal.SIGINT, timeout=600,
                   after_signal=None):
    """Start `command`, send `sig` once ready() is true (then call after_signal()), and return
    (exit code, stdout, stderr)."""
    # As from a terminal: a run started in the background by a non-interactive shell (CI's,
    # for one) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt at all.
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + timeout
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"ended before it was interrupted: "
                                     f"{process.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise AssertionError(f"not ready after {timeout} s")
            time.sleep(0.1)
        process.send_signal(sig)
        if after_signal is not None:
            after_signal()
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, stderr


def log_has(path, text):
    return lambda: path.is_file() and text in path.read_text()


def train_args(root, out, max_iter=40, snapshot=10):
    return ["--bits", 12, "--net", "small", "--dataset", "digits", "--root", root, "--out", out,
            "--max-iter", max_iter, "--test-interval", max_iter, "--snapshot", snapshot,
            "--seed", 2, "--no-progress", "--backend", "torch"]


# ---------------------------------------------------------------- Ctrl-C and resume commands

@pytest.mark.slow
def test_train_resume_command_runs_as_printed(digits_data_root, tmp_path):
    out = tmp_path / "run"
    args = [TRAIN, *train_args(digits_data_root, out, max_iter=60, snapshot=0)]
    code, stdout, stderr = interrupt_when([sys.executable, *map(str, args)],
                                          log_has(out / "log.txt", "Iteration 20, lr"), ROOT,
                                          env=ONE_THREAD)
    assert code == 130 and "Traceback" not in stderr, stderr
    record = json.loads((out / "run.json").read_text())
    command = record["resume_command"]
    assert f"Continue with: {command}" in stdout and record["status"] == "interrupted"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = shell(command, cwd=elsewhere)  # from another folder, with no venv activated
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["iteration"] == 60


@pytest.mark.slow
def test_demo_ctrl_c_hints_run_as_printed(tmp_path):
    """Ctrl-C in the demo's training: the printed command and run.json's both continue it."""
    if not (IN_CI or os.environ.get("DLBHC_FULL_DEMO") == "1"):
        unavailable("trains the demo's model (minutes): runs under CI=true or DLBHC_FULL_DEMO=1")
    work = tmp_path / "work"
    work.mkdir()
    demo = [sys.executable, str(ROOT / "demo.py"), "--backend", "torch", "--quiet"]
    log = work / "runs" / "digits_small_12" / "log.txt"
    code, stdout, stderr = interrupt_when(demo, log_has(log, "Iteration 20, lr"), work,
                                          env=ONE_THREAD)
    assert code == 130 and "Traceback" not in stderr, stderr
    record = json.loads((log.parent / "run.json").read_text())
    command = record["resume_command"]
    assert f"Continue with: {command}" in stdout and "demo.py" in command
    # a plain retry says what happened and how to go on, in demo.py's own flags
    retry = tool(*demo[1:], cwd=work)
    assert retry.returncode == 2 and "was interrupted" in retry.stderr
    assert "--resume" in retry.stderr and "--force" in retry.stderr
    resumed = shell(command, cwd=tmp_path, timeout=3600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "mAP@100" in resumed.stdout and (work / "out" / "demo" / "montage.png").is_file()
    assert json.loads((log.parent / "run.json").read_text())["status"] == "completed"


def test_ctrl_c_in_prepare_is_one_line_and_exit_130(tmp_path):
    """SIGINT while prepare.py writes records: `prepare.py: interrupted`, no traceback, exit 130,
    and no dataset folder (written whole or not at all). One list entry is a FIFO: prepare blocks
    reading it, half-way through its records, until the signal comes, so no timing is involved.
    The writer end is closed after the signal: the kernel may hand SIGINT to one of prepare's
    other threads, and then only the read's end (EOF) lets the main thread act on it."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            images / f"{i:03d}.png")
        lines.append(f"{i:03d}.png {i % 2}")
    fifo = images / "stalled.png"
    os.mkfifo(fifo)
    lines.insert(20, "stalled.png 1")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    root = tmp_path / "data"
    command = [sys.executable, str(ROOT / "tools" / "prepare.py"), "--dataset", "list",
               "--list", str(tmp_path / "list.txt"), "--images-root", str(images), "--name",
               "photos", "--root", str(root), "--workers", "1", "--quiet", "--no-shuffle",
               "--resize", "32"]
    writer = []

    def reading_fifo():  # a writer may open a FIFO without blocking only once a reader has it
        try:
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False

    def close_writer(settle=0.0):
        time.sleep(settle)  # the signal's handler has run, in whichever thread, by then
        while writer:
            os.close(writer.pop())

    try:
        code, stdout, stderr = interrupt_when(command, reading_fifo, ROOT, timeout=300,
                                              after_signal=lambda: close_writer(0.5))
    finally:
        close_writer()
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == "prepare.py: interrupted"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not (root / "photos").exists()
    assert not [p.name for p in root.iterdir()]  # no partial folder, no lock left


# ---------------------------------------------------------------- --resume and its flags

@pytest.fixture(scope="module")
def finished_run(digits_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    done = tool(TRAIN, *train_args(digits_data_root, out, max_iter=20, snapshot=10))
    assert done.returncode == 0, done.stderr
    return out, digits_data_root


@pytest.mark.slow
def test_resume_needs_no_net_flags(finished_run):
    out, _ = finished_run
    done = tool(TRAIN, "--out", out, "--resume", "--no-progress", "--backend", "torch")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("flag, given, recorded", [
    ("--bits", 16, 12), ("--net", "kevinnet", "small"), ("--max-iter", 99, 20),
    ("--seed", 3, 2), ("--batch-size", 8, 64), ("--test-batch-size", 7, 100),
    ("--db", "lmdb", "leveldb")])
@pytest.mark.slow
def test_resume_flags_that_contradict_the_run_are_errors(finished_run, flag, given, recorded):
    out, root = finished_run
    done = tool(TRAIN, "--out", out, "--root", root, "--resume", flag, given, "--no-progress")
    assert done.returncode == 2, done.stderr
    assert f"{flag} {given} contradicts the run in {out}, which has {flag} {recorded}" in \
        done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_resume_flags_that_agree_are_fine(finished_run):
    out, root = finished_run
    done = tool(TRAIN, *train_args(root, out, max_iter=20, snapshot=10), "--resume")
    assert done.returncode == 0, done.stderr


def test_resume_without_a_folder_says_how_to_name_it():
    done = tool(TRAIN, "--resume")
    assert done.returncode == 2 and "--out DIR" in done.stderr


# ---------------------------------------------------------------- a run folder's earlier run

@pytest.mark.parametrize("status, words", [
    ("failed", "failed (TrainError: boom); continue it from its latest snapshot with --resume, "
               "or start it over with --force"),
    ("interrupted", "was interrupted; continue it from its latest snapshot with --resume"),
    ("completed", "completed; use --force to train it again")])
@pytest.mark.slow
def test_a_retry_says_how_the_earlier_run_ended(finished_run, tmp_path, status, words):
    out, root = finished_run
    copy = tmp_path / "run"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    record = json.loads((copy / "run.json").read_text())
    record.update(status=status, error="TrainError: boom")
    if status != "failed":
        del record["error"]
    (copy / "run.json").write_text(json.dumps(record))
    done = tool(TRAIN, *train_args(root, copy, max_iter=20, snapshot=10))
    assert done.returncode == 2
    assert f"run folder {copy} holds a run that {words}" in done.stderr


def test_a_failure_before_the_first_snapshot_says_force(tmp_path):
    from dlbhc_caffe import runs

    (tmp_path / "run.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    with pytest.raises(runs.RunFolderError, match="failed \\(x\\) before its first snapshot; "
                                                 "start it over with --force"):
        runs.check_run_folder(tmp_path)


# ---------------------------------------------------------------- make paper without a GPU

@pytest.mark.slow
def test_paper_recipe_says_the_cost_and_stops_without_a_gpu(tmp_path):
    from dlbhc_caffe import backends

    try:
        backends.get("torch").check_device(0)
        unavailable("this machine has a GPU for the torch backend", hardware=True)
    except ImportError:
        pass
    env = dict(os.environ, DLBHC_DATA=str(tmp_path / "data"), PY=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "paper_recipe.sh")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "about 12 GB" in done.stdout and "1600000 images forward and backward" in done.stdout
    assert "no usable GPU 0" in done.stderr and "DLBHC_GPU=cpu make paper" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing prepared, nothing downloaded


# ---------------------------------------------------------------- noise

@pytest.mark.parametrize("script", ["tools/prepare.py", "tools/train.py", "tools/evaluate.py",
                                    "tools/upgrade_net.py", "demo.py"])
@pytest.mark.slow
def test_help_cites_nothing_outside_the_repository(script):
    done = tool(ROOT / script, "--help")
    assert done.returncode == 0 and "design.md" not in done.stdout


@pytest.mark.slow
def test_help_examples_continue_their_lines():
    """Every example line of evaluate --help that ends in a backslash goes on, indented."""
    lines = tool(ROOT / "tools" / "evaluate.py", "--help").stdout.splitlines()
    continued = [i for i, line in enumerate(lines) if line.rstrip().endswith("\\")]
    assert len(continued) >= 2
    for i in continued:
        assert lines[i].rstrip().endswith(" \\") and lines[i + 1].startswith("        --")


@pytest.mark.caffe
def test_the_parity_table_comes_after_the_run(caffe):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_torch_parity.py", "-k", "test_tiny_net_forward_backward"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    out = done.stdout
    assert out.index("[100%]") < out.index("torch backend vs real Caffe")  # after the dots


# ---------------------------------------------------------------- class names in montages

def test_montages_name_classes_when_the_dataset_has_names():
    from types import SimpleNamespace

    from dlbhc_caffe.search import workflow

    hit = SimpleNamespace(rank=1, hamming=0, euclidean=None, label=2, path=None)
    [(query, [tile])] = workflow.montage_rows([np.zeros((8, 8), np.uint8)], [[hit]], [1],
                                              class_names=["cat", "dog", "tulip"])
    assert query.caption.split("\n")[1] == "dog" and tile.caption.split("\n")[-1] == "tulip"
    assert tile.match is False
    [(query, [tile])] = workflow.montage_rows([np.zeros((8, 8), np.uint8)], [[hit]], [1])
    assert query.caption.split("\n")[1] == "label 1" and tile.caption.endswith("label 2")


@pytest.mark.slow
def test_setup_prints_no_editable_install_banner(tmp_path):
    """scripts/setup_env.sh (every make target's first step) in a fresh clone, with a venv that
    sees this one's packages: no setuptools banner, just its own lines."""
    import hashlib
    import sysconfig

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    packages = sysconfig.get_paths()["purelib"]
    target = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "shared-packages.pth").write_text(packages + "\n")
    stamp = hashlib.sha256(b"".join((clone / name).read_bytes() for name in
                                    ("requirements.txt", "setup.py", "pyproject.toml")))
    (clone / ".venv" / ".dlbhc-requirements").write_text(stamp.hexdigest() + "\n")
    done = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=clone, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, DLBHC_NO_CAFFE="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[setup] ready: .venv" and done.stderr == ""
