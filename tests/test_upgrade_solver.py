"""upgrade_net.py upgrades solver prototxt too, told by content, as Caffe's
upgrade_solver_proto_text does (held against the built tool)."""
import subprocess
import sys

import pytest

from conftest import ROOT
from dlbhc_caffe import proto
from dlbhc_caffe.proto import pb

TOOL = ROOT / "tools" / "upgrade_net.py"
SOLVER = """net: "train_val.prototxt"
test_iter: 100
test_interval: 100
base_lr: 0.001
lr_policy: "step"
gamma: 0.1
stepsize: 25000
max_iter: 50000
momentum: 0.9
weight_decay: 0.0005
snapshot_prefix: "snap"
"""


def upgrade_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("old, new", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                      ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                      ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_the_type_string(old, new, tmp_path):
    (tmp_path / "old.prototxt").write_text(SOLVER + f"solver_type: {old}\n")
    done = upgrade_tool(tmp_path / "old.prototxt", tmp_path / "new.prototxt")
    assert done.returncode == 0, done.stderr
    solver = proto.read_text(tmp_path / "new.prototxt", pb.SolverParameter)
    assert solver.type == new and not solver.HasField("solver_type")
    assert solver.base_lr == pytest.approx(0.001) and solver.net == "train_val.prototxt"


def test_a_current_solver_is_written_as_it_is_with_a_note(tmp_path):
    (tmp_path / "old.prototxt").write_text(SOLVER + 'type: "Adam"\n')
    done = upgrade_tool(tmp_path / "old.prototxt", tmp_path / "new.prototxt")
    assert done.returncode == 0 and "already in the current format" in done.stderr
    assert proto.read_text(tmp_path / "new.prototxt", pb.SolverParameter) == \
        proto.read_text(tmp_path / "old.prototxt", pb.SolverParameter)


def test_bad_solvers_are_one_line_errors(tmp_path):
    (tmp_path / "both.prototxt").write_text(SOLVER + 'solver_type: SGD\ntype: "SGD"\n')
    done = upgrade_tool(tmp_path / "both.prototxt", tmp_path / "out.prototxt")
    assert done.returncode == 2 and "both given" in done.stderr
    (tmp_path / "typo.prototxt").write_text(SOLVER + "bsae_lr: 0.1\n")
    done = upgrade_tool(tmp_path / "typo.prototxt", tmp_path / "out.prototxt")
    assert done.returncode == 2 and "typo.prototxt:12" in done.stderr
    assert "SolverParameter" in done.stderr and 'no field named "bsae_lr"' in done.stderr
    for bad in (done,):
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.prototxt").exists()


def test_the_kind_is_told_by_content(tmp_path):
    assert proto.text_kind('layers { name: "a" type: RELU }') == "net"
    assert proto.text_kind("solver_type: ADAM\nbase_lr: 0.1") == "solver"
    assert proto.text_kind("") == "net"  # an empty net, as Caffe reads it
    with pytest.raises(proto.ProtoError, match="LayerParameter.* no field named \"typo\""):
        proto.text_kind('layer { name: "a" typo: "ReLU" }')


def test_the_originals_solver_upgrades(fixtures_dir, tmp_path):
    source = fixtures_dir / "models" / "solver_CIFAR10_48.prototxt"
    done = upgrade_tool(source, tmp_path / "solver.prototxt")
    assert done.returncode == 0, done.stderr
    assert proto.read_text(tmp_path / "solver.prototxt", pb.SolverParameter).train_net == \
        "train_CIFAR10_48.prototxt"


@pytest.mark.caffe
@pytest.mark.parametrize("extra", ["solver_type: NESTEROV\n", "solver_type: ADADELTA\n",
                                   'type: "RMSProp"\n', "", "solver_type: SGD\n"])
def test_agrees_with_caffes_upgrade_solver_proto_text(extra, caffe_tools, tmp_path):
    source = tmp_path / "old.prototxt"
    source.write_text(SOLVER + "test_net: \"t.prototxt\"\nsolver_mode: GPU\n" + extra)
    caffe = subprocess.run([str(caffe_tools / "upgrade_solver_proto_text"), str(source),
                            str(tmp_path / "caffe.prototxt")], capture_output=True, text=True,
                           timeout=60)
    assert caffe.returncode == 0, caffe.stderr
    ours = upgrade_tool(source, tmp_path / "ours.prototxt")
    assert ours.returncode == 0, ours.stderr
    assert (tmp_path / "ours.prototxt").read_text() == (tmp_path / "caffe.prototxt").read_text()


@pytest.mark.caffe
def test_both_fields_are_refused_as_caffe_refuses_them(caffe_tools, tmp_path):
    source = tmp_path / "both.prototxt"
    source.write_text(SOLVER + 'solver_type: ADAM\ntype: "Adam"\n')
    caffe = subprocess.run([str(caffe_tools / "upgrade_solver_proto_text"), str(source),
                            str(tmp_path / "caffe.prototxt")], capture_output=True, text=True,
                           timeout=60)
    assert caffe.returncode != 0 and "cannot be both specified" in caffe.stderr
    ours = upgrade_tool(source, tmp_path / "ours.prototxt")
    assert ours.returncode == 2 and not (tmp_path / "ours.prototxt").exists()
