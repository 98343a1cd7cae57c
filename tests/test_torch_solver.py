"""The torch backend's solvers: Caffe's loop (test passes, iter_size, snapshots, solve) and its
update rules, held against the formulas computed here in numpy on a net whose gradient is known
in closed form. test_torch_parity.py holds the same solvers against real Caffe."""
import logging
import math
import textwrap

import numpy as np
import pytest
from conftest import unavailable

from dlbhc_caffe.backends import torch as engine
from dlbhc_caffe.backends.torch.solver import SolverError
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import blob_to_array, parse_text, pb, read_solverstate

LINEAR = """
name: "linear"
layer { name: "data" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

X = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [2.0, 0.5, -1.0], [-1.0, -1.0, 3.0]],
             np.float32)
T = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], np.float32)


def solver_param(text, net=LINEAR):
    param = parse_text(textwrap.dedent(text), pb.SolverParameter())
    parse_text(net, param.net_param)
    return param


def linear_solver(kind="SGD", extra=""):
    solver = engine.get_solver(solver_param(f"""
        type: "{kind}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.1
        random_seed: 3 {extra}"""))
    solver.net.blobs["x"].data[...] = X
    solver.net.blobs["t"].data[...] = T
    return solver


def gradients(w, b):
    """d loss / d (W, b) of EuclideanLoss(x W^T + b, t) = sum(err^2) / N / 2."""
    err = X.astype(np.float64) @ w.T + b - T
    return err.T @ X / len(X), err.sum(0) / len(X)


def reference_run(kind, w, b, steps, base_lr=0.05, momentum=0.9, decay=0.1, beta2=0.999,
                  delta=1e-8):
    """Caffe's updates for the LINEAR net, written out: lr_mult (1, 2), decay_mult (1, 0)."""
    params, lr_mult, decay_mult = [w.astype(np.float64), b.astype(np.float64)], [1, 2], [1, 0]
    history = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    for it in range(steps):
        grads = gradients(*params)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + decay * decay_mult[i] * p
            rate = base_lr * lr_mult[i]
            if kind == "SGD":
                history[i] = momentum * history[i] + rate * g
                update = history[i]
            elif kind == "Nesterov":
                previous = history[i]
                history[i] = momentum * history[i] + rate * g
                update = (1 + momentum) * history[i] - momentum * previous
            else:  # Adam, beta1 = momentum
                history[i] = momentum * history[i] + (1 - momentum) * g
                second[i] = beta2 * second[i] + (1 - beta2) * g * g
                t = it + 1
                correction = math.sqrt(1 - beta2 ** t) / (1 - momentum ** t)
                update = rate * correction * history[i] / (np.sqrt(second[i]) + delta)
            params[i] = p - update
    return params, history, second


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "Adam"])
def test_update_rules_match_caffe_formulas(kind):
    solver = linear_solver(kind)
    w0, b0 = (p.data.copy() for p in solver.net.params["ip"])
    solver.step(3)
    (w, b), history, second = reference_run(kind, w0, b0, 3)
    np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solver.history[0].numpy(), history[0], rtol=1e-5, atol=1e-7)
    if kind == "Adam":
        assert len(solver.history) == 4  # m for each param, then v for each
        np.testing.assert_allclose(solver.history[3].numpy(), second[1], rtol=1e-4, atol=1e-9)
    assert solver.iter == 3


def test_sgd_diff_holds_the_update_after_a_step():
    solver = linear_solver("SGD")
    before = solver.net.params["ip"][0].data.copy()
    solver.step(1)
    change = before - solver.net.params["ip"][0].data
    np.testing.assert_allclose(solver.net.params["ip"][0].diff, change, rtol=1e-5, atol=1e-7)


def test_l1_regularization_and_clip_gradients():
    solver = linear_solver("SGD", 'regularization_type: "L1" clip_gradients: 0.1')
    solver.param.momentum = 0.0
    w0, b0 = (p.data.astype(np.float64) for p in solver.net.params["ip"])
    solver.step(1)
    gw, gb = gradients(w0, b0)
    scale = min(1.0, 0.1 / math.sqrt((gw ** 2).sum() + (gb ** 2).sum()))
    assert scale < 1  # the clip is active: the norm is scaled down to 0.1, then decay is added
    expected_w = w0 - 0.05 * (gw * scale + 0.1 * np.sign(w0))
    expected_b = b0 - 0.05 * 2 * gb * scale
    np.testing.assert_allclose(solver.net.params["ip"][0].data, expected_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, expected_b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("policy,extra,expected", [
    ("fixed", "", lambda it: 0.1),
    ("step", "gamma: 0.5 stepsize: 3", lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", "gamma: 0.9", lambda it: 0.1 * 0.9 ** it),
    ("inv", "gamma: 0.1 power: 0.75", lambda it: 0.1 * (1 + 0.1 * it) ** -0.75),
    ("multistep", "gamma: 0.1 stepvalue: 2 stepvalue: 5",
     lambda it: 0.1 * 0.1 ** ((it >= 2) + (it >= 5))),
    ("poly", "power: 2 max_iter: 10", lambda it: 0.1 * (1 - it / 10) ** 2),
    ("sigmoid", "gamma: -0.5 stepsize: 4", lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
])
def test_learning_rate_policies(policy, extra, expected):
    solver = engine.SGDSolver(solver_param(f'base_lr: 0.1 lr_policy: "{policy}" {extra}'))
    for it in range(9):
        solver.iter = it
        assert solver.learning_rate() == pytest.approx(expected(it), rel=1e-6), it
    if policy in ("step", "multistep"):
        assert solver.current_step == (2 if policy == "step" else 2)


def test_solver_errors():
    with pytest.raises(SolverError, match="unknown lr_policy 'steep'"):
        engine.SGDSolver(solver_param('base_lr: 0.1 lr_policy: "steep"'))
    with pytest.raises(SolverError, match="momentum cannot be used with AdaGrad"):
        engine.get_solver(solver_param('type: "AdaGrad" base_lr: 0.1 lr_policy: "fixed" '
                                       'momentum: 0.9'))
    with pytest.raises(SolverError, match="unknown solver type 'Foo'"):
        engine.get_solver(solver_param('type: "Foo" base_lr: 0.1 lr_policy: "fixed"'))
    with pytest.raises(SolverError, match="exactly one of net"):
        engine.SGDSolver(parse_text('base_lr: 0.1 lr_policy: "fixed"', pb.SolverParameter()))


def test_get_solver_picks_the_type():
    for kind in ("SGD", "Nesterov", "Adam", "AdaGrad", "RMSProp", "AdaDelta"):
        momentum = 0.9 if kind in ("SGD", "Nesterov", "Adam", "AdaDelta") else 0.0
        solver = engine.get_solver(solver_param(f'type: "{kind}" base_lr: 0.1 '
                                                f'lr_policy: "fixed" momentum: {momentum}'))
        assert type(solver).__name__ == f"{kind}Solver" and solver.type == kind
        per_param = 2 if kind in ("Adam", "AdaDelta") else 1
        assert len(solver.history) == per_param * len(solver.net.learnable_params)


# ---------------------------------------------------------------- the loop

DATA_NET = """
name: "data_net"
layer {{ name: "data" type: "Data" top: "x" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.01 }}
        data_param {{ source: "{db}" backend: LMDB batch_size: {batch} }} }}
layer {{ name: "test_data" type: "Data" top: "x" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.01 }}
        data_param {{ source: "{db}" backend: LMDB batch_size: 4 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "y" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""


@pytest.fixture()
def records_db(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 2, 3, 3), dtype=np.uint8)
    write_records(tmp_path / "db", [(images[i], i % 3) for i in range(16)], backend="lmdb")
    return tmp_path / "db"


def data_solver(records_db, batch=4, extra=""):
    return engine.get_solver(solver_param(
        f'base_lr: 0.5 lr_policy: "fixed" momentum: 0.5 weight_decay: 0.001 random_seed: 7 '
        f'{extra}', net=DATA_NET.format(db=records_db, batch=batch)))


def test_iter_size_accumulates_and_divides(records_db):
    """Two batches of 4 accumulated (iter_size 2) update as one batch of 8."""
    halves = data_solver(records_db, batch=4, extra="iter_size: 2")
    whole = data_solver(records_db, batch=8)
    assert np.array_equal(halves.net.params["ip"][0].data, whole.net.params["ip"][0].data)
    halves.step(3)
    whole.step(3)
    np.testing.assert_allclose(halves.net.params["ip"][0].data, whole.net.params["ip"][0].data,
                               rtol=1e-5, atol=1e-7)
    halves.close()
    whole.close()


def test_test_interval_and_initialization(records_db, caplog):
    caplog.set_level(logging.INFO, logger="dlbhc_caffe.torch")
    solver = data_solver(records_db, extra="test_iter: 2 test_interval: 2 display: 1")
    solver.step(5)
    tested = [r.getMessage() for r in caplog.records if "Testing net" in r.getMessage()]
    assert tested == [f"Iteration {i}, Testing net (#0)" for i in (0, 2, 4)]
    assert any("Train net output #0: loss" in r.getMessage() for r in caplog.records)
    assert set(solver.last_test_scores[0]) == {"acc", "loss"}
    caplog.clear()
    quiet = data_solver(records_db, extra="test_iter: 1 test_interval: 2 "
                                          "test_initialization: false")
    quiet.step(3)
    tested = [r.getMessage() for r in caplog.records if "Testing net" in r.getMessage()]
    assert tested == ["Iteration 2, Testing net (#0)"]
    # The test net shares the train net's weights (the same memory).
    test_weights = quiet.test_nets[0].params["ip"][0]
    assert np.array_equal(test_weights.data, quiet.net.params["ip"][0].data)
    quiet.net.params["ip"][0].data[...] = 0.25
    assert (test_weights.data == 0.25).all()
    solver.close()
    quiet.close()


def test_snapshot_restore_continues_exactly(tmp_path):
    prefix = tmp_path / "snap"
    straight = linear_solver("Nesterov", f'snapshot_prefix: "{prefix}"')
    straight.step(4)
    first = linear_solver("Nesterov", f'snapshot_prefix: "{prefix}"')
    first.step(2)
    model, state = first.snapshot()
    assert model == f"{prefix}_iter_2.caffemodel" and state == f"{prefix}_iter_2.solverstate"
    saved = read_solverstate(state)
    assert saved.iter == 2 and saved.learned_net == model and len(saved.history) == 2
    np.testing.assert_array_equal(blob_to_array(saved.history[0]), first.history[0].numpy())
    resumed = linear_solver("Nesterov")
    resumed.net.params["ip"][0].data[...] = 0  # the weights come from learned_net
    resumed.restore(state)
    assert resumed.iter == 2
    resumed.step(2)
    for i in range(2):
        np.testing.assert_allclose(resumed.net.params["ip"][i].data,
                                   straight.net.params["ip"][i].data, rtol=1e-6, atol=1e-8)
    adam = linear_solver("Adam")
    with pytest.raises(SolverError, match="incorrect length of history blobs"):
        adam.restore(state)


def test_solve_snapshots_relative_to_the_working_directory(tmp_path, monkeypatch, records_db):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(DATA_NET.format(db="db", batch=4))
    (tmp_path / "snaps").mkdir()
    (tmp_path / "solver.prototxt").write_text(textwrap.dedent("""
        net: "net.prototxt"
        test_iter: 1
        test_interval: 100
        base_lr: 0.1
        lr_policy: "fixed"
        max_iter: 5
        snapshot: 2
        snapshot_prefix: "snaps/run"
        display: 0
    """))
    solver = engine.SGDSolver("solver.prototxt")
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.solve()
    assert solver.iter == 5 and calls == ["start", "ready"] * 5
    for it in (2, 4, 5):  # every `snapshot` iterations, and after training
        assert (tmp_path / f"snaps/run_iter_{it}.caffemodel").is_file()
        state = read_solverstate(tmp_path / f"snaps/run_iter_{it}.solverstate")
        assert state.learned_net == f"snaps/run_iter_{it}.caffemodel"
    assert not (tmp_path / "snaps/run_iter_3.caffemodel").exists()
    resumed = engine.SGDSolver("solver.prototxt")
    resumed.solve("snaps/run_iter_4.solverstate")
    assert resumed.iter == 5
    solver.close()
    resumed.close()


def test_snapshot_prefix_folder_must_exist(tmp_path):
    with pytest.raises(SolverError, match="cannot write snapshots with prefix"):
        engine.SGDSolver(solver_param(f'base_lr: 0.1 lr_policy: "fixed" snapshot: 5 '
                                      f'snapshot_prefix: "{tmp_path}/missing/run"'))


def test_test_nets_run_forward_only(records_db):
    solver = data_solver(records_db, extra="test_iter: 1 test_interval: 10")
    test_net = solver.test_nets[0]
    test_net.forward()
    assert all(record is None for record in test_net._records)  # no autograd graph kept
    # Backward still runs on request, as in Caffe (each layer recorded from its blobs then).
    test_net.backward()
    assert any(abs(blob.diff).max() > 0 for blob in test_net.learnable_params)
    solver.net.forward()
    assert any(record is not None for record in solver.net._records)
    solver.close()


def test_check_device_without_cuda():
    if __import__("torch").cuda.is_available():
        unavailable("a CUDA device is present", hardware=True)
    from dlbhc_caffe.backends import BackendUnavailable  # noqa: PLC0415

    engine.check_device(None)
    with pytest.raises(BackendUnavailable, match="GPU 0 requested, but PyTorch .* sees no CUDA"):
        engine.check_device(0)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        engine.set_mode_gpu()
