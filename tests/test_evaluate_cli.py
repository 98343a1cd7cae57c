"""tools/evaluate.py, and the readers of codes and labels behind it (dlbhc_caffe.codes)."""
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from dlbhc_caffe import codes, hamming, metrics

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "evaluate.py"


def evaluate_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.fixture
def small_files(tmp_path):
    """A small database and query set as .npz (codes, labels, fc7) and as .npy + .txt."""
    rng = np.random.default_rng(0)
    files = {}
    for name, n in (("db", 400), ("query", 25)):
        code = rng.integers(0, 2, (n, 16), dtype=np.uint8)
        labels = rng.integers(0, 4, n)
        fc7 = rng.normal(size=(n, 8)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", codes=code, labels=labels, fc7=fc7)
        np.save(tmp_path / f"{name}-codes.npy", code)
        (tmp_path / f"{name}-labels.txt").write_text("".join(f"{v}\n" for v in labels))
        files[name] = (code, labels, fc7)
    return tmp_path, files


# ------------------------------------------------------------------------------------------------
# the command line

@pytest.mark.slow
def test_cli_reproduces_the_released_48_bit_evaluation(fixtures_dir, tmp_path):
    folder = fixtures_dir / "released48"
    out = tmp_path / "eval"
    done = evaluate_tool("--db-codes", folder / "binary-train.mat",
                         "--db-labels", folder / "train-label.txt",
                         "--query-codes", folder / "binary-test.mat",
                         "--query-labels", folder / "test-label.txt", "--out", out)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "mAP@1000 = 0.897373" in lines
    assert any(re.fullmatch(r"mAP \(whole ranking\) = 0\.\d{6}", line) for line in lines)
    assert any(re.fullmatch(r"precision within Hamming radius 2 = 0\.\d{6}", line)
               for line in lines)
    assert any(line.startswith("queries with nothing within Hamming radius 2 = 0.")
               for line in lines)
    ours = np.loadtxt(out / "precision-at-k.txt")
    expected = np.loadtxt(folder / "precision-at-k.txt")
    np.testing.assert_array_equal(ours[:, 0], expected[:, 0])
    np.testing.assert_allclose(ours[:, 1], expected[:, 1], rtol=0, atol=1e-6)
    # the original's layout: MATLAB save -ascii, two columns of %15.7e
    line = (out / "precision-at-k.txt").read_text().splitlines()[0]
    assert re.fullmatch(r" +1\.0000000e\+00 +\d\.\d{7}e[-+]\d\d", line)
    assert len(line) == len((folder / "precision-at-k.txt").read_text().splitlines()[0])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["map@1000"] == pytest.approx(0.8973732, abs=1e-7)
    assert summary["bits"] == 48 and summary["n_queries"] == 10_000
    assert len(summary["precision_at_k"]) == 1000
    assert (out / "precision-at-k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_refuses_to_overwrite_without_force(small_files):
    folder, _ = small_files
    out = folder / "out"
    args = ["--db-codes", folder / "db.npz", "--query-codes", folder / "query.npz",
            "--top-k", 50, "--out", out]
    first = evaluate_tool(*args)
    assert first.returncode == 0, first.stderr
    assert "mAP@50 = " in first.stdout
    before = (out / "metrics.json").stat().st_mtime_ns
    second = evaluate_tool(*args)
    assert second.returncode != 0
    assert "already holds" in second.stderr and "--force" in second.stderr
    assert (out / "metrics.json").stat().st_mtime_ns == before
    third = evaluate_tool(*args, "--force")
    assert third.returncode == 0, third.stderr


def test_cli_matches_the_library_on_npy_and_txt(small_files):
    folder, files = small_files
    done = evaluate_tool("--db-codes", folder / "db-codes.npy",
                         "--db-labels", folder / "db-labels.txt",
                         "--query-codes", folder / "query-codes.npy",
                         "--query-labels", folder / "query-labels.txt", "--top-k", 100)
    assert done.returncode == 0, done.stderr
    result = metrics.evaluate(files["db"][0], files["db"][1], files["query"][0],
                              files["query"][1], top_k=100)
    for line in metrics.format_summary(result):
        assert line in done.stdout.splitlines()


def test_cli_euclidean_mode_on_fc7(small_files):
    folder, files = small_files
    done = evaluate_tool("--db-codes", folder / "db.npz", "--query-codes", folder / "query.npz",
                         "--distance", "euclidean", "--top-k", 100)
    assert done.returncode == 0, done.stderr
    result = metrics.evaluate(files["db"][2], files["db"][1], files["query"][2],
                              files["query"][1], top_k=100, distance="euclidean")
    assert f"mAP@100 = {result.map_at_k:.6f}" in done.stdout.splitlines()
    assert "radius" not in done.stdout


@pytest.mark.slow
def test_cli_bad_input_names_the_culprit(small_files):
    folder, _ = small_files
    short = folder / "short-labels.txt"
    short.write_text("1\n2\n")
    done = evaluate_tool("--db-codes", folder / "db-codes.npy", "--db-labels", short,
                         "--query-codes", folder / "query.npz")
    assert done.returncode == 2
    assert "has 400 rows but" in done.stderr and "short-labels.txt has 2 labels" in done.stderr
    assert "Traceback" not in done.stderr
    done = evaluate_tool("--db-codes", folder / "db.npz", "--query-codes", folder / "query.npz",
                         "--top-k", 1000)
    assert done.returncode == 2 and "--top-k 1000 is larger than the database" in done.stderr
    done = evaluate_tool("--db-codes", folder / "missing.npz", "--query-codes",
                         folder / "query.npz")
    assert done.returncode == 2 and "missing.npz: no such file" in done.stderr


# ------------------------------------------------------------------------------------------------
# dlbhc_caffe.codes

def test_reads_the_original_matlab_v73_files(fixtures_dir):
    folder = fixtures_dir / "released48"
    train = codes.load_codes(folder / "binary-train.mat")
    assert train.shape == (50_000, 48) and train.dtype == np.uint8
    with h5py.File(folder / "binary-train.mat", "r") as mat:
        np.testing.assert_array_equal(train, mat["binary_train"][()])  # rows are images
    labels = codes.load_labels(folder / "train-label.txt")
    assert labels.shape == (50_000,) and labels.dtype == np.int64 and labels.max() == 9
    features = codes.load_features(folder / "feat-test.mat")
    assert features.shape == (10_000, 48) and features.dtype == np.float32
    np.testing.assert_array_equal(codes.load_codes(folder / "binary-test.mat"),
                                  (features > 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="feat-test.mat: codes must hold only 0 and 1"):
        codes.load_codes(folder / "feat-test.mat")


def test_matlab_orientation_follows_the_labels(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 2, (30, 12), dtype=np.uint8)
    labels = rng.integers(0, 3, 30)
    np.save(tmp_path / "labels.npy", labels)
    # the original's layout: one column per image (MATLAB 12x30)
    scipy.io.savemat(tmp_path / "columns.mat", {"binary_train": rows.T})
    # the other: one row per image (MATLAB 30x12)
    scipy.io.savemat(tmp_path / "rows.mat", {"codes": rows})
    for name in ("columns.mat", "rows.mat"):
        got, got_labels = codes.load_set(tmp_path / name, tmp_path / "labels.npy")
        np.testing.assert_array_equal(got, rows)
        np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(codes.load_codes(tmp_path / "columns.mat"), rows)
    with h5py.File(tmp_path / "v73.mat", "w") as mat:  # what MATLAB -v7.3 writes for 12x30
        mat["binary_train"] = rows
    np.testing.assert_array_equal(codes.load_codes(tmp_path / "v73.mat"), rows)


def test_bad_files_are_named(tmp_path):
    np.save(tmp_path / "vector.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"vector\.npy: expected codes as a 2-D array"):
        codes.load_codes(tmp_path / "vector.npy")
    np.savez(tmp_path / "nocodes.npz", labels=np.zeros(3))
    with pytest.raises(ValueError, match=r"nocodes\.npz: has no 'codes' array"):
        codes.load_codes(tmp_path / "nocodes.npz")
    np.savez(tmp_path / "nolabels.npz", codes=np.zeros((3, 8)))
    with pytest.raises(ValueError, match=r"nolabels\.npz: holds no labels"):
        codes.load_set(tmp_path / "nolabels.npz")
    (tmp_path / "gap.txt").write_text("1\n\n2\n")
    with pytest.raises(ValueError, match=r"gap\.txt: line 2 is blank"):
        codes.load_labels(tmp_path / "gap.txt")
    (tmp_path / "codes.csv").write_text("0,1\n")
    with pytest.raises(ValueError, match=r"codes\.csv: unknown file type"):
        codes.load_codes(tmp_path / "codes.csv")
    np.savez(tmp_path / "mismatch.npz", codes=np.zeros((4, 8)), labels=np.zeros(3))
    with pytest.raises(ValueError, match=r"mismatch\.npz has 4 rows but .*mismatch\.npz has 3 "
                                         r"labels"):
        codes.load_set(tmp_path / "mismatch.npz")
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.zeros((3, 4)), "b": np.ones((3, 4))})
    with pytest.raises(ValueError, match=r"two\.mat: cannot tell which variable"):
        codes.load_codes(tmp_path / "two.mat")


def test_index_files_go_through_the_search_module(tmp_path, monkeypatch):
    """An .index path is read by dlbhc_caffe.search.load_index (packed codes are unpacked)."""
    rng = np.random.default_rng(2)
    rows = rng.integers(0, 2, (20, 48), dtype=np.uint8)
    loaded = types.SimpleNamespace(codes=hamming.pack_codes(rows), bits=48,
                                   labels=np.arange(20) % 3, fc7=None)
    monkeypatch.setattr(codes, "search", types.SimpleNamespace(load_index=lambda path: loaded))
    path = tmp_path / "any.index"
    path.touch()
    got, labels = codes.load_set(path)
    np.testing.assert_array_equal(got, rows)
    np.testing.assert_array_equal(labels, np.arange(20) % 3)
    with pytest.raises(ValueError, match=r"any\.index: the index holds no fc7"):
        codes.load_features(path)


def test_index_written_by_the_search_module(tmp_path):
    from dlbhc_caffe import search  # noqa: PLC0415

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 2, (30, 12), dtype=np.uint8)
    index = search.HashIndex(bits=12)
    index.add(rows, labels=np.arange(30) % 4)
    index.save(tmp_path / "db.index")
    got, labels = codes.load_set(tmp_path / "db.index")
    np.testing.assert_array_equal(got, rows)
    np.testing.assert_array_equal(labels, np.arange(30) % 4)


# ---------------------------------------------------------------- codes extracted from a model

def _map_line(stdout):
    match = re.search(r"^mAP@(\d+) = (\d\.\d{6})$", stdout, re.M)
    assert match, stdout
    return int(match.group(1)), float(match.group(2))


def test_run_mode_extracts_the_splits_and_agrees_with_the_file_mode(trained_small_run, tmp_path):
    """--run encodes the test split against the train split (run_cifar10.m's protocol); the
    saved codes, evaluated as files, give the same figures."""
    out = tmp_path / "eval"
    done = evaluate_tool("--run", trained_small_run["run"], "--root", trained_small_run["root"],
                         "--top-k", 100, "--out", out)
    assert done.returncode == 0, done.stderr
    k, value = _map_line(done.stdout)
    assert k == 100 and value >= 0.85  # the trained 12-bit model retrieves (random: ~0.14)
    database = np.load(out / "database.npz")
    queries = np.load(out / "queries.npz")
    assert database["codes"].shape == (1497, 12) and queries["codes"].shape == (300, 12)
    again = evaluate_tool("--db-codes", out / "database.npz", "--query-codes",
                          out / "queries.npz", "--top-k", 100)
    assert _map_line(again.stdout) == (k, value)
    # the same model given as deploy + caffemodel + mean + scale, on the dataset named
    run = trained_small_run["run"]
    mean = trained_small_run["root"] / "digits" / "mean.binaryproto"
    direct = evaluate_tool("--deploy", run / "deploy.prototxt", "--model",
                           run / "final.caffemodel", "--mean", mean, "--scale", 1 / 256,
                           "--dataset", "digits", "--root", trained_small_run["root"],
                           "--top-k", 100)
    assert direct.returncode == 0, direct.stderr
    assert _map_line(direct.stdout) == (k, value)
    refused = evaluate_tool("--run", run, "--root", trained_small_run["root"], "--out", out)
    assert refused.returncode == 2 and "--force" in refused.stderr


def test_model_mode_needs_both_files(tmp_path):
    done = evaluate_tool("--deploy", tmp_path / "d.prototxt", "--dataset", "digits")
    assert done.returncode == 2 and "--deploy and --model go together" in done.stderr
