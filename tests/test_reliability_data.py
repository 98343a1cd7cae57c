"""Issue 10, items 3, 6 and 9 (a held LevelDB): every record of a database is checked before
or as it is read, naming the database and the key; a truncated LMDB is an error, not a SIGBUS;
a LevelDB held by another process is named as such. Training under real Caffe runs in a child
process here, so a missed check could only kill the child."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlbhc_caffe import proto
from dlbhc_caffe.datasets import dbread
from dlbhc_caffe.datasets.db import DatabaseError, write_records
from dlbhc_caffe.errors import DlbhcError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def _records(n=12, bad=None):
    rng = np.random.default_rng(0)
    out = [proto.datum_from_array(rng.integers(0, 255, (1, 8, 8), dtype=np.uint8), i % CLASSES)
           for i in range(n)]
    if bad == "shape":
        out[5] = proto.datum_from_array(np.zeros((1, 4, 4), np.uint8), 1)
    elif bad == "bytes":
        out[5].data = out[5].data[:-3]
    elif bad == "label":
        out[5].label = 57
    elif bad == "garbage":
        return out[:5] + [b"\xff\xff\xff not a datum"] + out[6:]
    return out


BADS = {"shape": "shape 1x4x4, the first record's is 1x8x8",
        "bytes": "a 1x8x8 record needs 64 values, it holds 61 bytes",
        "label": "label 57 is outside 0..9 (10 classes)",
        "garbage": "not a Datum"}


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
@pytest.mark.parametrize("bad", sorted(BADS))
def test_check_records_names_database_and_key(tmp_path, backend, bad):
    db = tmp_path / f"db_{backend}"
    write_records(db, _records(bad=bad), backend)
    with pytest.raises(DatabaseError) as err:
        dbread.check_records(db, classes=CLASSES)
    assert str(err.value).startswith(f"{db}: record 00000005: ")
    assert BADS[bad] in str(err.value) and "\n" not in str(err.value)


TRAIN_VAL = """name: "t"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" backend: %s batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "%s" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 display: 0
snapshot_prefix: "%s" solver_mode: CPU
"""


def _solver(tmp_path, db, backend):
    net = tmp_path / "train_val.prototxt"
    net.write_text(TRAIN_VAL % (db, backend.upper()))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER % (net, tmp_path / "snap"))
    return solver


_TRAIN = """
import sys
from dlbhc_caffe.train.loop import train
try:
    train(sys.argv[1], backend=sys.argv[2], progress=False, echo=None, handle_signals=False)
    print("TRAINED")
except ValueError as err:
    print("ERROR", err)
"""


def _train_child(solver, backend):
    return subprocess.run([sys.executable, "-c", _TRAIN, str(solver), backend], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bad", sorted(BADS))
def test_torch_training_refuses_bad_records(tmp_path, bad):
    from dlbhc_caffe.train.loop import TrainError, train  # noqa: PLC0415

    db = tmp_path / "db"
    write_records(db, _records(bad=bad), "lmdb")
    with pytest.raises(TrainError) as err:
        train(_solver(tmp_path, db, "lmdb"), backend="torch", progress=False, echo=None,
              handle_signals=False)
    message = str(err.value)
    assert "layer 'data' (Data)" in message and f"{db}: record 00000005" in message
    assert BADS[bad] in message and "\n" not in message


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("bad", sorted(BADS))
def test_caffe_training_refuses_bad_records(caffe, tmp_path, bad):
    db = tmp_path / "db"
    write_records(db, _records(bad=bad), "leveldb")
    done = _train_child(_solver(tmp_path, db, "leveldb"), "caffe")
    assert done.returncode == 0, done.stderr[-1500:]       # no abort
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR ") and f"{db}: record 00000005" in line and BADS[bad] in line


@pytest.mark.caffe
def test_caffe_training_accepts_good_records(caffe, tmp_path):
    db = tmp_path / "db"
    write_records(db, _records(), "leveldb")
    done = _train_child(_solver(tmp_path, db, "leveldb"), "caffe")
    assert done.stdout.strip().splitlines()[-1] == "TRAINED", done.stderr[-1500:]


# ---------------------------------------------------------------- item 6: truncated LMDB

def _truncated_lmdb(tmp_path):
    db = tmp_path / "cut_lmdb"
    rng = np.random.default_rng(1)
    write_records(db, [proto.datum_from_array(rng.integers(0, 255, (3, 32, 32), np.uint8), 1)
                       for _ in range(64)], "lmdb")
    data = db / "data.mdb"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    return db


def test_truncated_lmdb_is_an_error_not_sigbus(tmp_path):
    db = _truncated_lmdb(tmp_path)
    with pytest.raises(DatabaseError, match="truncated LMDB: data.mdb is .* its header says"):
        list(dbread.open_db(db))
    with pytest.raises(DatabaseError, match="truncated LMDB"):
        dbread.count_records(db)


def test_truncated_lmdb_would_kill_a_plain_reader(tmp_path):
    """Why the check: reading the cut file through py-lmdb alone dies of SIGBUS (in a child)."""
    db = _truncated_lmdb(tmp_path)
    code = ("import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False)\n"
            "with env.begin() as txn:\n    print(sum(len(v) for _, v in txn.cursor()))")
    done = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True)
    assert done.returncode == -7      # SIGBUS


def test_torch_data_layer_names_a_truncated_lmdb(tmp_path):
    from dlbhc_caffe.backends import torch as engine  # noqa: PLC0415

    db = _truncated_lmdb(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(TRAIN_VAL % (db, "LMDB"))
    with pytest.raises(DlbhcError, match=f"layer 'data' \\(Data\\): {db}: truncated LMDB"):
        engine.Net(str(net), engine.TRAIN)


@pytest.mark.caffe
def test_caffe_validation_names_a_truncated_lmdb(caffe, tmp_path):
    from dlbhc_caffe.backends import caffe as engine  # noqa: PLC0415

    db = _truncated_lmdb(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(TRAIN_VAL % (db, "LMDB"))
    with pytest.raises(engine.NetValidationError, match="truncated LMDB"):
        engine.validate_net(str(net), "TRAIN")


# ---------------------------------------------------------------- item 9: a held LevelDB

def test_torch_data_layer_on_a_leveldb_held_elsewhere(tmp_path):
    from dlbhc_caffe.backends import torch as engine  # noqa: PLC0415

    db = tmp_path / "held_leveldb"
    write_records(db, _records(), "leveldb")
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys, time\n"
                               "db = plyvel.DB(sys.argv[1])\nprint('held', flush=True)\n"
                               "time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        net = tmp_path / "net.prototxt"
        net.write_text(TRAIN_VAL % (db, "LEVELDB"))
        with pytest.raises(DlbhcError) as err:
            engine.Net(str(net), engine.TRAIN)
    finally:
        holder.kill()
        holder.wait()
    assert "is open in another process" in str(err.value) and "LMDB" not in str(err.value)
