"""Caffe's engine-free rules (dlbhc_caffe.rules), held against real Caffe where Caffe decides.

- the nets a solver builds and the NetState each gets (Solver::InitTrainNet / InitTestNets),
  compared layer by layer with the nets real Caffe's solver builds from the same file;
- the solver checks both engines share; the history a solver state must hold (two blobs a param
  for Adam and AdaDelta); the DataTransformer checks; the torch solver's learning rate is the
  rules' learning rate.
"""
import textwrap

import numpy as np
import pytest

from dlbhc_caffe import backends, proto
from dlbhc_caffe.proto import pb
from dlbhc_caffe.rules import outputs, schedule, solver as solver_rules, transform

NET = """
name: "staged"
{state}
layer {{ name: "data" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "train_only" type: "ReLU" bottom: "y" top: "t" include {{ phase: TRAIN }} }}
layer {{ name: "test_only" type: "ReLU" bottom: "y" top: "u" include {{ phase: TEST }} }}
layer {{ name: "staged" type: "ReLU" bottom: "y" top: "s" include {{ stage: "deep" }} }}
layer {{ name: "not_deep" type: "ReLU" bottom: "y" top: "n" exclude {{ stage: "deep" }} }}
layer {{ name: "leveled" type: "ReLU" bottom: "y" top: "l" include {{ min_level: 1 }} }}
"""

SOLVERS = {
    "generic net, two test nets": ('net: "{net}" test_iter: 1 test_iter: 1 test_interval: 10', ""),
    "train_state changes the phase": ('net: "{net}" train_state {{ phase: TEST }}', ""),
    "stages and levels merge": ('net: "{net}" train_state {{ stage: "deep" level: 1 }} '
                                'test_iter: 1 test_interval: 5 test_state {{ stage: "deep" }}', ""),
    "the net's own state": ('net: "{net}" test_iter: 1 test_interval: 5',
                            'state { stage: "deep" }'),
    "train_net and test_net": ('train_net: "{net}" test_net: "{net}" test_iter: 3 '
                               'test_interval: 5', ""),
}


def _layers(names):
    return [n for n in names if not n.endswith("_split")]


@pytest.mark.parametrize("case", sorted(SOLVERS))
def test_solver_nets_are_the_nets_real_caffe_builds(caffe, tmp_path, case):
    text, state = SOLVERS[case]
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(state=state))
    path = tmp_path / "solver.prototxt"
    path.write_text(text.format(net=net) + ' base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
                    'solver_mode: CPU')
    ours = solver_rules.solver_nets(proto.read_solver(path))
    real = caffe.get_solver(str(path))
    theirs = [real.net] + list(real.test_nets)
    assert len(ours) == len(theirs)
    for mine, built in zip(ours, theirs):
        assert [layer.name for layer in mine.filtered().layer] == _layers(built._layer_names)
        assert outputs.net_outputs(mine.filtered()) == list(built.outputs)


def solver(text):
    return proto.parse_text(textwrap.dedent(text), pb.SolverParameter())


@pytest.mark.parametrize("text, message", [
    ('base_lr: 0.1', "exactly one of net"),
    ('net: "a" net_param {} base_lr: 0.1', "exactly one of net"),
    ('net_param {} test_net_param {}', "test_iter must be specified for each test network"),
    ('net_param {} test_iter: 2', "positive test_interval"),
    ('net_param {} test_iter: 1 test_interval: 1 test_state {} test_state {}',
     "test_state must be unspecified or specified once per test net"),
])
def test_solver_nets_refuse_what_caffe_checks(text, message):
    with pytest.raises(solver_rules.SolverError, match=message):
        solver_rules.solver_nets(solver(text))


@pytest.mark.parametrize("text, kind, message", [
    ('lr_policy: "steep"', "SGD", "unknown lr_policy 'steep'"),
    ('', "SGD", "lr_policy is not set"),
    ('lr_policy: "step"', "SGD", "needs a positive stepsize"),
    ('lr_policy: "fixed" regularization_type: "L3"', "SGD", "regularization_type 'L3'"),
    ('lr_policy: "fixed" snapshot: 10', "SGD", "snapshot_prefix is not"),
    ('lr_policy: "fixed" momentum: 0.9', "AdaGrad", "momentum cannot be used with AdaGrad"),
    ('lr_policy: "fixed" rms_decay: 2', "RMSProp", "rms_decay must be in"),
    ('lr_policy: "fixed"', "Foo", "unknown solver type 'Foo'"),
])
def test_check_solver(text, kind, message):
    with pytest.raises(solver_rules.SolverError, match=message):
        solver_rules.check_solver(solver(text), kind)


def test_history_holds_two_blobs_a_param_for_adam():
    shapes = [(2, 3), (2,)]
    blobs = [proto.array_to_blob(np.zeros(s, np.float32)) for s in shapes]
    solver_rules.check_history(blobs, shapes, "SGD", "s.solverstate")
    solver_rules.check_history(blobs * 2, shapes, "Adam", "s.solverstate")
    with pytest.raises(solver_rules.SolverError, match="incorrect length of history blobs"):
        solver_rules.check_history(blobs, shapes, "AdaDelta", "s.solverstate")
    with pytest.raises(solver_rules.SolverError, match=r"history blob 1 has shape \(2,\)"):
        solver_rules.check_history(blobs, [(2, 3), (5,)], "SGD", "s")


def test_the_torch_solver_takes_the_rules_learning_rate():
    torch_engine = backends.get("torch")
    param = solver('''
        net_param { layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 } } } }
        base_lr: 0.1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4''')
    sgd = torch_engine.SGDSolver(param)
    step = 0
    for it in range(6):
        sgd.iter = it
        rate, step = schedule.learning_rate(param, it, step)
        assert sgd.learning_rate() == rate and sgd.current_step == step


@pytest.mark.parametrize("kwargs, message", [
    (dict(record_shape=(3, 8, 8), crop=9), r"crop_size 9 is larger than the records \(8x8\)"),
    (dict(record_shape=(3, 8, 8), crop=(4, 9)), "crop_size 4x9 is larger"),
    (dict(record_shape=(3, 8, 8), mean_shape=(3, 6, 6)), "3x6x6 .CxHxW. but the records are 3x8x8"),
    (dict(record_shape=(3, 8, 8), mean_values=2), "2 mean_value entries for 3-channel records"),
])
def test_transform_checks(kwargs, message):
    with pytest.raises(transform.TransformError, match=message):
        transform.transformed_shape(**kwargs)


def test_transform_param_checks():
    param = pb.TransformationParameter(mean_file="m", mean_value=[1], force_color=False)
    with pytest.raises(transform.TransformError, match="layer 'd': cannot specify mean_file"):
        transform.check_param(param, "layer 'd'")
    with pytest.raises(transform.TransformError, match="force_color and force_gray"):
        transform.check_param(pb.TransformationParameter(force_color=True, force_gray=True))
