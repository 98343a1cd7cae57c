"""Training: Caffe's solver driven by dlbhc_caffe.train, and tools/train.py.

- the shared small model (tests/conftest.py: trained_small_run) learns: loss falls, test accuracy
  is far above chance, and its codes retrieve (12-bit mAP@100, test split against train split);
- pretrained weights are copied by layer name, exactly, as `caffe train -weights` does;
- a resumed run restores the iteration, the lr schedule and the momentum history, and on a net fed
  a fixed batch continues exactly as the uninterrupted run;
- Ctrl-C / SIGTERM stop with a snapshot; the log is Caffe's, read by the same parser as Caffe's.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, unavailable
from dlbhc_caffe import proto
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import pb
from dlbhc_caffe.train import (TrainError, filter_net, learning_rate, loss_outputs, net_outputs,
                               parse_log, train)
from dlbhc_caffe.rules.schedule import schedule_state

TRAIN_TOOL = ROOT / "tools" / "train.py"
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ train\.py\] ")


# ---------------------------------------------------------------- schedule, log, net facts

@pytest.mark.parametrize("fields, iteration, expected", [
    (dict(lr_policy="fixed"), 1234, 0.01),
    (dict(lr_policy="step", gamma=0.1, stepsize=100), 99, 0.01),
    (dict(lr_policy="step", gamma=0.1, stepsize=100), 250, 0.0001),
    (dict(lr_policy="exp", gamma=0.5), 3, 0.00125),
    (dict(lr_policy="inv", gamma=1.0, power=2.0), 1, 0.0025),
    (dict(lr_policy="poly", power=1.0, max_iter=100), 25, 0.0075),
    (dict(lr_policy="sigmoid", gamma=1.0, stepsize=10), 10, 0.005),
])
def test_learning_rate_is_caffes(fields, iteration, expected):
    solver = pb.SolverParameter(base_lr=0.01, **fields)
    assert learning_rate(solver, iteration)[0] == pytest.approx(expected, rel=1e-6)


def test_multistep_advances_one_step_an_iteration():
    solver = pb.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.5,
                                stepvalue=[2, 3, 10])
    rates, step = [], 0
    for it in range(12):
        rate, step = learning_rate(solver, it, step)
        rates.append(rate)
    assert rates == [1, 1, .5, .25, .25, .25, .25, .25, .25, .25, .125, .125]
    assert schedule_state(solver, 12) == 3 and schedule_state(solver, 3) == 1


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown lr_policy 'cosine'"):
        learning_rate(pb.SolverParameter(base_lr=1, lr_policy="cosine"), 0)


def test_parse_log_reads_the_authors_caffe_log(fixtures_dir):
    history = parse_log(fixtures_dir / "models" / "train_CIFAR10_48.log.txt")
    assert history.test["accuracy"][0] == (0, 0.096875)
    assert history.train_loss[:3] == [(0, 2.32529), (20, 2.34315), (40, 2.34112)]
    assert {rate for _, rate in history.lr} == {0.001}


STATE_NET = """
name: "rules"
state { level: 1 }
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "deep" type: "InnerProduct" bottom: "data" top: "deep"
        inner_product_param { num_output: 2 } include { min_level: 2 } }
layer { name: "staged" type: "InnerProduct" bottom: "data" top: "staged"
        inner_product_param { num_output: 2 } include { stage: "extra" phase: TRAIN } }
layer { name: "unstaged" type: "Power" bottom: "data" top: "unstaged"
        exclude { stage: "extra" } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "aux" type: "EuclideanLoss" bottom: "ip" bottom: "ip" top: "aux"
        loss_weight: 0.25 }
"""


@pytest.mark.parametrize("phase, level, stages", [
    ("TRAIN", 0, []), ("TEST", 0, []), ("TRAIN", 2, ["extra"]), ("TEST", 3, ["extra"]),
])
def test_net_filter_outputs_and_losses_are_caffes(caffe, tmp_path, phase, level, stages):
    path = tmp_path / "net.prototxt"
    path.write_text(STATE_NET)
    state = pb.NetState(phase=getattr(pb, phase), level=level, stage=stages)
    ours = filter_net(proto.read_net(path), state)
    net = caffe.Net(str(path), getattr(caffe, phase), level=level, stages=stages)
    assert [layer.name for layer in ours.layer] == [n for n in net._layer_names
                                                    if not n.endswith("_split")]
    assert net_outputs(ours) == list(net.outputs)
    weights = dict(zip(net._blob_names, net._blob_loss_weights))
    assert loss_outputs(ours) == {name: w for name, w in weights.items() if w}


# ---------------------------------------------------------------- small nets for the loop

def _fixed_batch_db(path, count=8, seed=0):
    """A LevelDB of `count` 3x8x8 records: with batch_size == count, every batch is the same."""
    rng = np.random.default_rng(seed)
    write_records(path, [(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), i % 4)
                         for i in range(count)], "leveldb")
    return path


def _write_run(folder, net_text, **solver_fields):
    folder.mkdir(parents=True, exist_ok=True)
    solver_fields.setdefault("lr_policy", "fixed")  # Caffe aborts at the first step without one
    (folder / "net.prototxt").write_text(net_text)
    solver = pb.SolverParameter(net=str(folder / "net.prototxt"),
                                snapshot_prefix=str(folder / "snap"), **solver_fields)
    proto.write_text(solver, folder / "solver.prototxt")
    return folder / "solver.prototxt"


FIXED_BATCH_NET = """
name: "fixed"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{db}" batch_size: 8 backend: LEVELDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""

RESUME_SOLVER = dict(base_lr=0.1, lr_policy="multistep", gamma=0.5, stepvalue=[3, 5],
                     momentum=0.9, weight_decay=0.001, max_iter=6, snapshot=1, display=1,
                     random_seed=3)


def _model_arrays(path):
    return {layer.name: [proto.blob_to_array(b) for b in layer.blobs]
            for layer in proto.read_net(path).layer if len(layer.blobs)}


def _state(path):
    state = proto.read_solverstate(path)
    return state.iter, state.current_step, [proto.blob_to_array(b) for b in state.history]


def _assert_same_model(a, b):
    a, b = _model_arrays(a), _model_arrays(b)
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert np.array_equal(x, y), name


def _assert_same_state(a, b):
    (it_a, step_a, hist_a), (it_b, step_b, hist_b) = _state(a), _state(b)
    assert (it_a, step_a) == (it_b, step_b)
    assert len(hist_a) == len(hist_b) > 0
    for x, y in zip(hist_a, hist_b):
        assert np.array_equal(x, y)


def test_resume_restores_the_state_and_continues_exactly(caffe, tmp_path):
    db = _fixed_batch_db(tmp_path / "fixed_leveldb")
    net = FIXED_BATCH_NET.format(db=db)
    whole = _write_run(tmp_path / "whole", net, **RESUME_SOLVER)
    done = train(whole, backend="caffe", progress=False, echo=None,
                 log_path=tmp_path / "whole" / "log.txt")
    assert done.completed and len(done.snapshots) == 6
    snapshot3 = tmp_path / "whole" / "snap_iter_3.solverstate"
    # after the updates of iterations 0..2: iteration 3, no multistep step taken yet (the update
    # of iteration 3 takes the first)
    assert _state(snapshot3)[:2] == (3, 0)

    # 1. what the solver holds right after --resume is what the snapshot held
    same = _write_run(tmp_path / "same", net, **dict(RESUME_SOLVER, max_iter=3, snapshot=0))
    held = train(same, backend="caffe", resume=snapshot3, progress=False, echo=None)
    assert held.iteration == 3 and held.snapshots
    _assert_same_state(held.snapshots[-1][1], snapshot3)
    _assert_same_model(held.snapshots[-1][0], tmp_path / "whole" / "snap_iter_3.caffemodel")

    # 2. the resumed run's updates equal the uninterrupted run's, iteration by iteration
    resumed = _write_run(tmp_path / "resumed", net, **RESUME_SOLVER)
    again = train(resumed, backend="caffe", resume=snapshot3, progress=False, echo=None,
                  log_path=tmp_path / "resumed" / "log.txt")
    assert again.resumed_from == snapshot3 and [m.name for m, _ in again.snapshots] == \
        ["snap_iter_4.caffemodel", "snap_iter_5.caffemodel", "snap_iter_6.caffemodel"]
    for it in (4, 5, 6):
        _assert_same_model(tmp_path / "resumed" / f"snap_iter_{it}.caffemodel",
                           tmp_path / "whole" / f"snap_iter_{it}.caffemodel")
        _assert_same_state(tmp_path / "resumed" / f"snap_iter_{it}.solverstate",
                           tmp_path / "whole" / f"snap_iter_{it}.solverstate")
    # 3. the learning rate: the schedule continues (multistep at 3 and 5: 0.1, 0.05, 0.025)
    whole_log = parse_log(tmp_path / "whole" / "log.txt")
    resumed_log = parse_log(tmp_path / "resumed" / "log.txt")
    assert resumed_log.lr == whole_log.lr[3:]
    assert [round(r, 6) for _, r in whole_log.lr] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert resumed_log.train_loss == whole_log.train_loss[3:]
    assert "no data cursor" in (tmp_path / "resumed" / "log.txt").read_text()


def test_resume_refuses_a_snapshot_of_another_net(caffe, tmp_path):
    db = _fixed_batch_db(tmp_path / "fixed_leveldb")
    first = _write_run(tmp_path / "a", FIXED_BATCH_NET.format(db=db),
                       **dict(RESUME_SOLVER, max_iter=1))
    train(first, backend="caffe", progress=False, echo=None)
    other_net = FIXED_BATCH_NET.format(db=db).replace("num_output: 4 kernel_size: 3",
                                                      "num_output: 5 kernel_size: 3")
    other = _write_run(tmp_path / "b", other_net, **RESUME_SOLVER)
    with pytest.raises(TrainError, match="layer 'conv', param 0: shape"):
        train(other, backend="caffe", resume=tmp_path / "a" / "snap_iter_1.solverstate",
              progress=False, echo=None)


# ---------------------------------------------------------------- pretrained weights

INPUT_NET = """
name: "finetune"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 5 weight_filler { type: "constant" value: 0.5 }
                              bias_filler { type: "constant" value: -1 } } }
layer { name: "c" type: "InnerProduct" bottom: "b" top: "c"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "c" bottom: "label" top: "loss" }
"""


def _caffemodel(path, layers):
    model = pb.NetParameter(name="pretrained")
    for name, arrays in layers.items():
        layer = model.layer.add(name=name, type="InnerProduct")
        for array in arrays:
            layer.blobs.add().CopyFrom(proto.array_to_blob(array))
    proto.write_binary(model, path)
    return path


def test_weights_copy_exactly_the_named_layers(caffe, tmp_path):
    rng = np.random.default_rng(7)
    known = {"a": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
             "c": [rng.normal(size=(3, 5)), rng.normal(size=3)],
             "zzz": [rng.normal(size=(9, 9))]}
    weights = _caffemodel(tmp_path / "known.caffemodel", known)
    # base_lr 0: the one iteration leaves every weight as it was after the copy
    solver = _write_run(tmp_path / "run", INPUT_NET, base_lr=0.0, momentum=0.9,
                        weight_decay=0.1, max_iter=1, lr_policy="fixed")
    result = train(solver, backend="caffe", weights=weights, final_model=tmp_path / "final.caffemodel",
                   progress=False, echo=None, log_path=tmp_path / "log.txt")
    assert (result.weights.copied, result.weights.kept, result.weights.ignored) == \
        (["a", "c"], ["b"], ["zzz"])
    final = _model_arrays(tmp_path / "final.caffemodel")
    for name in ("a", "c"):
        for have, want in zip(final[name], known[name]):
            assert np.array_equal(have, want.astype(np.float32)), name
    assert np.all(final["b"][0] == 0.5) and np.all(final["b"][1] == -1)  # its fillers
    log = (tmp_path / "log.txt").read_text()
    assert "Copying weights from" in log and "keep their fillers: b" in log
    assert "Ignoring source layers absent from the net: zzz" in log


def test_weights_of_another_shape_name_the_layer(caffe, tmp_path):
    weights = _caffemodel(tmp_path / "bad.caffemodel",
                          {"a": [np.zeros((4, 3, 3, 3)), np.zeros(4)],
                           "c": [np.zeros((3, 6)), np.zeros(3)]})
    solver = _write_run(tmp_path / "run", INPUT_NET, base_lr=0.1, max_iter=1)
    with pytest.raises(TrainError, match=r"layer 'c', param 0: shape \(3, 6\) in the weights, "
                                         r"\(3, 5\) in the net"):
        train(solver, backend="caffe", weights=weights, progress=False, echo=None)
    assert not list((tmp_path / "run").glob("snap_iter_*"))  # nothing trained, nothing written


def test_weights_and_resume_are_exclusive(tmp_path):
    with pytest.raises(TrainError, match="not both"):
        train(tmp_path / "solver.prototxt", backend="caffe", weights="w.caffemodel",
              resume="s.solverstate")


# ---------------------------------------------------------------- the shared small model

def _encode(run, root):
    from dlbhc_caffe.encode import Encoder  # noqa: PLC0415

    encoder = Encoder.from_run(run, backend="caffe", batch_size=100)
    database = encoder.encode_db(root / "digits" / "digits_train_leveldb")
    queries = encoder.encode_db(root / "digits" / "digits_test_leveldb")
    return database, queries


def test_small_model_learns_on_digits(trained_small_run):
    run = Path(trained_small_run["run"])
    history = parse_log(run / "log.txt")
    first_loss, last_loss = history.train_loss[0][1], history.train_loss[-1][1]
    assert first_loss > 2.0 and last_loss < 0.5 * first_loss, history.train_loss
    accuracy = history.test["accuracy"]
    assert accuracy[0] == (0, pytest.approx(0.1, abs=0.06))     # chance, before training
    assert accuracy[-1][0] == 600 and accuracy[-1][1] >= 0.85    # chance is 0.1
    print(f"\nsmall net, digits, 12 bits: loss {first_loss:.3f} -> {last_loss:.3f}, test accuracy "
          f"{accuracy[0][1]:.3f} -> {accuracy[-1][1]:.3f}, "
          f"{trained_small_run['seconds']:.0f} s")


def test_small_model_codes_retrieve(trained_small_run):
    from dlbhc_caffe import metrics  # noqa: PLC0415

    database, queries = _encode(trained_small_run["run"], Path(trained_small_run["root"]))
    assert database.codes.shape == (1497, 12) and queries.codes.shape == (300, 12)
    ours = metrics.mean_average_precision(database.codes, database.labels, queries.codes,
                                          queries.labels, top_k=100)
    rng = np.random.default_rng(0)
    chance = metrics.mean_average_precision(rng.integers(0, 2, database.codes.shape),
                                            database.labels, rng.integers(0, 2, (300, 12)),
                                            queries.labels, top_k=100)
    print(f"\nsmall net, digits, 12 bits: mAP@100 {ours:.3f} (random codes {chance:.3f})")
    assert chance < 0.25
    assert ours >= 0.85


def test_small_run_folder_is_complete(trained_small_run):
    run = Path(trained_small_run["run"])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["iteration"] == 600
    assert record["command"][1:] == [str(a) for a in trained_small_run["command"][2:]]
    assert record["versions"]["caffe"] and record["versions"]["python"]
    assert record["git"] is None or len(record["git"]["commit"]) == 40
    assert record["dataset"] == "digits" and record["dataset_manifest"]["name"] == "digits"
    assert (record["bits"], record["classes"], record["net"], record["backend"]) == \
        (12, 10, "small", "caffe")
    assert record["mean"]["file"].endswith("digits/mean.binaryproto")
    assert record["crop"] is None and record["seed"] == 1
    assert record["weights"]["source"] is None
    assert Path(record["final_model"]) == run / "final.caffemodel"
    assert [s["iteration"] for s in record["snapshots"]] == [300, 600]
    for entry in record["snapshots"]:
        assert Path(entry["caffemodel"]).is_file() and Path(entry["solverstate"]).is_file()
    assert record["test"]["accuracy"] >= 0.85
    with open(run / "loss.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = (run / "log.txt").read_text().splitlines()
    assert lines and all(GLOG_LINE.match(line) for line in lines)
    body = "\n".join(line.split("] ", 1)[1] for line in lines)
    assert "Iteration 100, Testing net (#0)\n    Test net output #0: accuracy = " in body
    assert re.search(r"^Iteration 20, loss = [\d.]+$", body, re.M)
    assert re.search(r"^Iteration 20, lr = 0\.01$", body, re.M)


def test_existing_run_folder_is_refused(trained_small_run):
    done = subprocess.run([sys.executable, str(TRAIN_TOOL), "--bits", "12", "--net", "small",
                           "--dataset", "digits", "--root", str(trained_small_run["root"]),
                           "--out", str(trained_small_run["run"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds a run that completed; use --force" in done.stderr


# ---------------------------------------------------------------- tools/train.py

def _train_tool(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, str(TRAIN_TOOL), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_train_tool_fine_tunes_from_a_caffemodel(caffe, digits_data_root, tmp_path):
    rng = np.random.default_rng(1)
    conv1 = [rng.normal(0, 0.1, (32, 3, 5, 5)), np.zeros(32)]
    weights = _caffemodel(tmp_path / "pre.caffemodel", {"conv1": conv1,
                                                        "fc1000": [np.zeros((4, 4))]})
    out = tmp_path / "run"
    done = _train_tool("--bits", 12, "--net", "small", "--dataset", "digits", "--root",
                       digits_data_root, "--out", out, "--weights", weights, "--max-iter", 2,
                       "--test-interval", 2, "--test-iter", 1, "--snapshot", 0, "--no-progress",
                       "--backend", "caffe")
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["weights"]["source"] == str(weights)
    assert record["weights"]["copied"] == ["conv1"]
    assert record["weights"]["ignored"] == ["fc1000"]
    assert record["weights"]["kept"] == ["conv2", "conv3", "fc7", "fc8_kevin", "fc8_pascal"]
    assert "Copying weights from" in done.stdout

    bad = _caffemodel(tmp_path / "bad.caffemodel", {"conv1": [np.zeros((32, 1, 5, 5)),
                                                              np.zeros(32)]})
    refused = _train_tool("--bits", 12, "--net", "small", "--dataset", "digits", "--root",
                          digits_data_root, "--out", tmp_path / "bad_run", "--weights", bad,
                          "--max-iter", 2, "--no-progress", "--backend", "caffe")
    assert refused.returncode == 2
    assert "layer 'conv1', param 0: shape (32, 1, 5, 5) in the weights, (32, 3, 5, 5)" in \
        refused.stderr
    assert "Traceback" not in refused.stderr
    missing = _train_tool("--bits", 12, "--net", "small", "--dataset", "digits", "--root",
                          digits_data_root, "--out", tmp_path / "c_run", "--weights",
                          "caffenet", "--max-iter", 2, "--no-progress")
    assert missing.returncode == 2 and "tools/prepare.py --weights caffenet" in missing.stderr


def test_gpu_on_a_cpu_only_caffe_is_refused_before_anything_is_written(caffe, digits_data_root,
                                                                       tmp_path):
    from dlbhc_caffe import backends  # noqa: PLC0415

    if backends.get("caffe").has_cuda():
        unavailable("this Caffe has CUDA", hardware=True)
    done = _train_tool("--bits", 12, "--net", "small", "--dataset", "digits", "--root",
                       digits_data_root, "--out", tmp_path / "run", "--gpu", 0, "--backend",
                       "caffe")
    assert done.returncode == 2
    assert "this Caffe is built CPU_ONLY" in done.stderr and "--backend torch" in done.stderr
    assert not (tmp_path / "run").exists()


def _wait_for(path, text, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before '{text}': {process.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"no '{text}' in {path} after {timeout} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_with_a_snapshot_and_resume_finishes(caffe, digits_data_root, tmp_path,
                                                            sig, code):
    out = tmp_path / "run"
    args = ["--bits", 12, "--net", "small", "--dataset", "digits", "--root", digits_data_root,
            "--out", out, "--max-iter", 60, "--test-interval", 60, "--snapshot", 0,
            "--seed", 2, "--no-progress", "--backend", "caffe"]
    process = subprocess.Popen([sys.executable, str(TRAIN_TOOL), *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "log.txt", "Iteration 20, lr", process)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted"
    [snapshot] = record["snapshots"]
    stopped_at = snapshot["iteration"]
    assert 20 < stopped_at < 60
    assert proto.read_solverstate(snapshot["solverstate"]).iter == stopped_at
    assert f"--resume {snapshot['solverstate']}" in record["resume_command"]
    assert not (out / "final.caffemodel").exists()

    resumed = _train_tool(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"iteration {stopped_at}" in resumed.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["iteration"] == 60
    assert len(record["resumes"]) == 1 and (out / "final.caffemodel").is_file()
    history = parse_log(out / "log.txt")
    assert history.test["accuracy"][-1][0] == 60


def test_help_says_resume_has_no_data_cursor():
    done = _train_tool("--help")
    assert done.returncode == 0
    assert "no data cursor" in " ".join(done.stdout.split())


# ---------------------------------------------------------------- a user's image list

def _digits_as_png_list(folder):
    """scikit-learn's digits written as PNG files, with train/test list files (the embedded
    dataset's split)."""
    from PIL import Image  # noqa: PLC0415

    from dlbhc_caffe.datasets import digits  # noqa: PLC0415

    images, labels = digits.load_images()
    train_idx, test_idx = digits.split_indices(labels)
    (folder / "img").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image, "L").save(folder / "img" / f"{i}.png")
    for name, indices in (("train.txt", train_idx), ("test.txt", test_idx)):
        (folder / name).write_text("".join(f"img/{i}.png {labels[i]}\n" for i in indices))
    return folder / "train.txt", folder / "test.txt"


@pytest.mark.slow
def test_small_model_on_a_users_image_list(caffe, tmp_path):
    """prepare --dataset list from PNG files of real digits, then the shared model's recipe."""
    from dlbhc_caffe import metrics  # noqa: PLC0415
    from dlbhc_caffe.encode import Encoder  # noqa: PLC0415

    train_list, test_list = _digits_as_png_list(tmp_path / "pngs")
    root = tmp_path / "data"
    prepared = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare.py"), "--dataset",
                               "list", "--list", train_list, "--test-list", test_list, "--name",
                               "mydigits", "--resize", "32", "--root", root, "--quiet"],
                              capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stderr
    from conftest import SMALL_RUN_ARGS  # noqa: PLC0415

    args = [a if a != "digits" else "mydigits" for a in SMALL_RUN_ARGS]
    done = _train_tool(*args, "--root", root, "--out", tmp_path / "run", timeout=1200)
    assert done.returncode == 0, done.stderr
    history = parse_log(tmp_path / "run" / "log.txt")
    assert history.test["accuracy"][-1][1] >= 0.85
    encoder = Encoder.from_run(tmp_path / "run", backend="caffe", batch_size=100)
    database = encoder.encode_db(root / "mydigits" / "mydigits_train_leveldb")
    queries = encoder.encode_db(root / "mydigits" / "mydigits_test_leveldb")
    value = metrics.mean_average_precision(database.codes, database.labels, queries.codes,
                                           queries.labels, top_k=100)
    print(f"\nsmall net, PNG list of digits, 12 bits: mAP@100 {value:.3f}, test accuracy "
          f"{history.test['accuracy'][-1][1]:.3f}")
    assert value >= 0.85


# ---------------------------------------------------------------- the paper's recipe

def _tiny_cifar10_archive(folder, per_batch=4, test=10):
    """cifar-10-binary.tar.gz in the official layout, with a few random records a batch."""
    import hashlib  # noqa: PLC0415
    import io  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    rng = np.random.default_rng(5)

    def batch(n):
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        return np.hstack([labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8)]).tobytes()

    members = {f"data_batch_{i}.bin": batch(per_batch) for i in range(1, 6)}
    members["test_batch.bin"] = batch(test)
    members["batches.meta.txt"] = "\n".join(["airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck"]).encode()
    path = folder / "cifar-10-binary.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_paper_recipe_end_to_end_on_a_tiny_archive(caffe, fixtures_dir, tmp_path):
    """scripts/paper_recipe.sh: prepare, fine-tune KevinNet 48 bits from a stand-in for CaffeNet,
    evaluate -- on a CIFAR-10-layout archive of 30 images, two iterations on the CPU."""
    import hashlib  # noqa: PLC0415

    downloads = tmp_path / "downloads"
    _, md5 = _tiny_cifar10_archive(downloads)
    rng = np.random.default_rng(9)
    stand_in = {"conv1": [rng.normal(0, 0.01, (96, 3, 11, 11)), np.zeros(96)],
                "conv2": [rng.normal(0, 0.01, (256, 48, 5, 5)), np.ones(256)]}
    weights = _caffemodel(downloads / "bvlc_reference_caffenet.caffemodel", stand_in)
    shutil.copy(fixtures_dir / "models" / "imagenet_mean.binaryproto", downloads)
    sha1 = hashlib.sha1(weights.read_bytes()).hexdigest()
    env = dict(os.environ, PY=sys.executable, DLBHC_DATA=str(tmp_path / "data"),
               DLBHC_RUN=str(tmp_path / "run"), DLBHC_GPU="cpu", DLBHC_BACKEND="caffe",
               DLBHC_MAX_ITER="2", DLBHC_TEST_INTERVAL="2", DLBHC_TEST_ITER="1",
               DLBHC_SNAPSHOT="0", DLBHC_BATCH="4", DLBHC_TOP_K="10", DLBHC_EVAL_BATCH="10",
               DLBHC_PREPARE_ARGS=f"--from {downloads} --checksum "
                                  f"cifar-10-binary.tar.gz=md5:{md5} --quiet",
               DLBHC_WEIGHTS_ARGS=f"--from {downloads} --checksum "
                                  f"bvlc_reference_caffenet.caffemodel=sha1:{sha1}",
               DLBHC_TRAIN_ARGS="--no-progress --seed 1")
    recipe = [str(ROOT / "scripts" / "paper_recipe.sh")]
    done = subprocess.run(recipe, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    assert (record["net"], record["bits"], record["crop"], record["iteration"]) == \
        ("kevinnet", 48, 227, 2)
    assert record["weights"]["copied"] == ["conv1", "conv2"]
    assert record["weights"]["kept"] == ["conv3", "conv4", "conv5", "fc6", "fc7", "fc8_kevin",
                                         "fc8_pascal"]
    assert record["mean"]["file"].endswith("ilsvrc12/imagenet_mean.binaryproto")
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert (report["top_k"], report["n_queries"], report["n_database"], report["bits"]) == \
        (10, 10, 20, 48)
    assert 0 <= report["map@10"] <= 1
    assert re.search(r"\[paper\] mAP@10 = [01]\.\d{6}", done.stdout)
    again = subprocess.run(recipe, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "final.caffemodel exists" in again.stdout and "cifar10 exists" in again.stdout
