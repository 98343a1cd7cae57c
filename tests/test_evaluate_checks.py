"""tools/evaluate.py checks its arguments before any work, speaks in flags, accepts --top-k all,
is --quiet on request, and leaves nothing behind when it fails."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from test_demo import TINY_DEPLOY, random_caffemodel
from test_evaluate_cli import evaluate_tool, small_files  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def evaluate_module():
    spec = importlib.util.spec_from_file_location("evaluate_tool", ROOT / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def digits_model(tmp_path):
    """A 6-bit deploy for digits' 3 x 32 x 32 records and a random caffemodel of it."""
    deploy = tmp_path / "digits.prototxt"
    deploy.write_text(TINY_DEPLOY.replace("BITS", "6").replace("dim: 16 dim: 16",
                                                                "dim: 32 dim: 32"))
    return deploy, random_caffemodel(deploy, tmp_path / "digits.caffemodel")


@pytest.mark.slow
def test_top_k_is_checked_against_the_dataset_before_the_model_is_touched(digits_data_root,
                                                                          tmp_path):
    """The dataset's manifest gives the database size; the model files (missing here) are not
    even looked at, so nothing was encoded."""
    out = tmp_path / "out"
    done = evaluate_tool("--deploy", tmp_path / "missing.prototxt", "--model",
                         tmp_path / "missing.caffemodel", "--dataset", "digits", "--root",
                         digits_data_root, "--top-k", 5000, "--out", out)
    assert done.returncode == 2
    assert "--top-k 5000 is larger than the database (1497 items" in done.stderr
    assert "--top-k all" in done.stderr and "None" not in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_top_k_all_ranks_the_whole_database(small_files):  # noqa: F811
    folder, _ = small_files
    done = evaluate_tool("--db-codes", folder / "db.npz", "--query-codes", folder / "query.npz",
                         "--top-k", "all")
    assert done.returncode == 0, done.stderr
    assert "mAP@400 = " in done.stdout
    too_many = evaluate_tool("--db-codes", folder / "db.npz", "--query-codes",
                             folder / "query.npz", "--top-k", 401)
    assert too_many.returncode == 2 and "give --top-k 400 or less" in too_many.stderr
    for bad in ("0", "-3", "most"):
        refused = evaluate_tool("--db-codes", folder / "db.npz", "--query-codes",
                                folder / "query.npz", "--top-k", bad)
        assert refused.returncode == 2 and "positive integer or 'all'" in refused.stderr


@pytest.mark.slow
def test_messages_speak_in_flags(small_files):  # noqa: F811
    folder, _ = small_files
    args = ["--db-codes", folder / "db.npz", "--query-codes", folder / "query.npz", "--top-k",
            10, "--out", folder / "out"]
    assert evaluate_tool(*args).returncode == 0
    again = evaluate_tool(*args)
    assert again.returncode == 2 and "--force" in again.stderr and "force=" not in again.stderr


def test_a_failure_after_encoding_leaves_nothing(digits_model, digits_data_root, tmp_path,
                                                 monkeypatch, capsys):
    tool = evaluate_module()
    deploy, weights = digits_model
    out = tmp_path / "eval"
    args = ["--deploy", str(deploy), "--model", str(weights), "--dataset", "digits", "--root",
            str(digits_data_root), "--top-k", "10", "--out", str(out), "--backend", "torch",
            "--quiet"]

    def full_disk(*_, **__):
        raise OSError(28, "No space left on device", str(out / "precision-at-k.txt"))

    monkeypatch.setattr(tool.metrics, "save_report", full_disk)
    with pytest.raises(SystemExit) as stop:
        tool.main(args)
    assert stop.value.code == 2 and "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []  # database.npz, queries.npz removed
    monkeypatch.undo()
    assert tool.main(args) == 0  # the retry is not refused
    assert {p.name for p in out.iterdir()} >= {"database.npz", "queries.npz", "metrics.json"}


@pytest.mark.slow
def test_quiet_has_no_progress_bars(digits_model, digits_data_root):
    deploy, weights = digits_model
    args = ["--deploy", deploy, "--model", weights, "--dataset", "digits", "--root",
            digits_data_root, "--top-k", 10, "--backend", "torch"]
    loud, quiet = evaluate_tool(*args), evaluate_tool(*args, "--quiet")
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "img/s" in loud.stderr and quiet.stderr == ""
    assert loud.stdout == quiet.stdout


@pytest.mark.parametrize("shape, cifar10", [((400, 25, 4), False),
                                           ((50000, 10000, 10), True)])
@pytest.mark.slow
def test_the_plot_has_the_papers_baselines_only_for_cifar10(shape, cifar10, tmp_path,
                                                            monkeypatch):
    n_database, n_queries, classes = shape
    rng = np.random.default_rng(0)
    for name, n in (("db", n_database), ("query", n_queries)):
        np.savez(tmp_path / f"{name}.npz", codes=rng.integers(0, 2, (n, 48), dtype=np.uint8),
                 labels=np.arange(n) % classes)
    tool = evaluate_module()
    drawn = {}

    def plot(precision, path, **options):
        drawn.update(options)
        Path(path).write_bytes(b"")

    monkeypatch.setattr(tool.plots, "plot_precision_at_k", plot)
    assert tool.main(["--db-codes", str(tmp_path / "db.npz"), "--query-codes",
                      str(tmp_path / "query.npz"), "--top-k", "20", "--out",
                      str(tmp_path / "out")]) == 0
    assert bool(drawn["baselines"]) is cifar10
    from dlbhc_caffe import plots

    assert plots.is_cifar10({"dataset": "cifar10", "name": "cifar10"})
    assert not plots.is_cifar10({"dataset": "list", "name": "photos"})
