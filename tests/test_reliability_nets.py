"""Issue 10, items 1, 5 and 9: nets real Caffe aborts on (or silently misreads) are refused with
one line naming the file and the layer, by the engine-free rules, by the encoders under both
backends, and by the tools (exit 2, no output written). Real Caffe only ever runs such a net in
a child process here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlbhc_caffe import proto
from dlbhc_caffe.errors import DlbhcError
from dlbhc_caffe.encode import Encoder
from dlbhc_caffe.rules.validate import RuleError, check_deploy, check_net

sys.path.insert(0, str(Path(__file__).parent))
from reliability_nets import BASE, CASES, net_text, write_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDS = [name for name, *_ in CASES]


def _one_line(text):
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


@pytest.fixture
def model_dir(tmp_path):
    write_model(tmp_path / "tiny.caffemodel")
    (tmp_path / "base.prototxt").write_text(BASE)
    for name, edits, *_ in CASES:
        (tmp_path / f"{name.replace(' ', '_')}.prototxt").write_text(net_text(edits))
    return tmp_path


def _deploy(folder, name):
    return folder / f"{name.replace(' ', '_')}.prototxt"


@pytest.mark.parametrize("name,edits,fragment,aborts", CASES, ids=IDS)
def test_rules_refuse_each_case(name, edits, fragment, aborts):
    net = proto.parse_text(net_text(edits), proto.pb.NetParameter(), "bad.prototxt")
    with pytest.raises(RuleError, match="^bad.prototxt: layer '") as err:
        check_net(net, "bad.prototxt")
    assert fragment in _one_line(str(err.value))


def test_rules_accept_the_base_net_and_give_caffe_shapes():
    net = proto.parse_text(BASE, proto.pb.NetParameter())
    shapes = check_net(net, "base")
    assert shapes.blobs["pool1"] == (2, 4, 3, 3) and shapes.blobs["encode_neuron"] == (2, 4)
    assert shapes.params["conv1"] == [(4, 3, 3, 3), (4,)]
    assert shapes.params["fc7"] == [(6, 36), (6,)] and not shapes.undecided


@pytest.mark.caffe
@pytest.mark.slow
@pytest.mark.parametrize("name,edits,fragment,aborts", CASES, ids=IDS)
def test_real_caffe_aborts_where_we_refuse(caffe, tmp_path, name, edits, fragment, aborts):
    """The reason for the rules: real Caffe kills the process on these nets (in a child here),
    or accepts the two it only checks in debug builds."""
    path = tmp_path / "net.prototxt"
    path.write_text(net_text(edits))
    done = subprocess.run([sys.executable, "-c", "import caffe, sys; "
                           "caffe.Net(sys.argv[1], caffe.TEST)", str(path)],
                          capture_output=True, text=True, env=dict(os.environ, GLOG_minloglevel="2"))
    if aborts:
        assert done.returncode == -6, done.stderr[-500:]   # SIGABRT: a failed CHECK
    else:
        assert done.returncode == 0, done.stderr[-500:]


_ENCODE_ALL = """
import json, sys
from dlbhc_caffe.encode import Encoder
out = {}
for name, deploy in json.loads(sys.argv[1]).items():
    try:
        Encoder.from_files(deploy, sys.argv[2], backend="caffe")
        out[name] = None
    except ValueError as err:
        out[name] = str(err)
print(json.dumps(out))
"""


@pytest.mark.caffe
@pytest.mark.slow
def test_caffe_encoder_refuses_every_case_without_aborting(caffe, model_dir):
    deploys = {name: str(_deploy(model_dir, name)) for name in IDS}
    done = subprocess.run([sys.executable, "-c", _ENCODE_ALL, json.dumps(deploys),
                           str(model_dir / "tiny.caffemodel")], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]   # no abort reached this process
    errors = json.loads(done.stdout.splitlines()[-1])
    for name, _, fragment, _ in CASES:
        assert errors[name] is not None, name
        assert fragment in _one_line(errors[name]) and str(_deploy(model_dir, name)) in \
            errors[name], errors[name]


def test_caffe_encoder_builds_the_base_net(caffe, model_dir):
    encoder = Encoder.from_files(model_dir / "base.prototxt", model_dir / "tiny.caffemodel",
                                 backend="caffe")
    latent, fc7 = encoder.forward(np.zeros((2, 3, 8, 8), np.float32))
    assert latent.shape == (2, 4) and fc7.shape == (2, 6)


@pytest.mark.parametrize("name,edits,fragment,aborts", CASES, ids=IDS)
def test_torch_encoder_refuses_every_case(model_dir, name, edits, fragment, aborts):
    with pytest.raises(DlbhcError) as err:
        Encoder.from_files(_deploy(model_dir, name), model_dir / "tiny.caffemodel",
                           backend="torch")
    assert fragment in _one_line(str(err.value))


# ---------------------------------------------------------------- item 5: file writers

HDF5_OUT = ('layer { name: "dump" type: "HDF5Output" bottom: "fc7" bottom: "fc8_kevin_encode" '
            'hdf5_output_param { file_name: "%s" } }\n')


@pytest.mark.parametrize("backend", ["caffe", "torch"])
def test_hdf5_output_is_refused_and_its_file_untouched(model_dir, backend, request):
    if backend == "caffe":
        request.getfixturevalue("caffe")
    victim = model_dir / "precious.txt"
    victim.write_text("keep me")
    deploy = model_dir / "writer.prototxt"
    deploy.write_text(BASE + HDF5_OUT % victim)
    with pytest.raises(RuleError, match="layer 'dump' \\(HDF5Output\\): writes the HDF5 file"):
        Encoder.from_files(deploy, model_dir / "tiny.caffemodel", backend=backend)
    assert victim.read_text() == "keep me"


def test_python_layer_is_refused_unless_named(tmp_path, monkeypatch):
    (tmp_path / "evil.py").write_text("")  # a named module must be found on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    net = proto.parse_text(BASE + 'layer { name: "py" type: "Python" bottom: "fc7" top: "p" '
                           'python_param { module: "evil" layer: "L" } }',
                           proto.pb.NetParameter())
    with pytest.raises(RuleError, match="layer 'py' \\(Python\\): runs Python code from the "
                                        "module it names \\(module 'evil'\\)"):
        check_deploy(net, "n.prototxt")
    assert check_deploy(net, "n.prototxt", allow_layers=["py"]).undecided == [("py", "Python")]


def test_a_named_python_layer_must_be_found():
    net = proto.parse_text(BASE + 'layer { name: "py" type: "Python" bottom: "fc7" top: "p" '
                           'python_param { module: "no_such_module_here" layer: "L" } }',
                           proto.pb.NetParameter())
    with pytest.raises(RuleError, match="python_param module 'no_such_module_here' is not found"):
        check_deploy(net, "n.prototxt", allow_layers=["py"])


@pytest.mark.caffe
def test_hdf5_output_truncates_files_in_real_caffe(caffe, model_dir):
    """Why the policy: real Caffe truncates the named file as soon as it builds the net."""
    victim = model_dir / "victim.txt"
    victim.write_text("keep me")
    deploy = model_dir / "writer.prototxt"
    deploy.write_text(BASE + HDF5_OUT % victim)
    subprocess.run([sys.executable, "-c", "import caffe, sys; caffe.Net(sys.argv[1], caffe.TEST)",
                    str(deploy)], capture_output=True, env=dict(os.environ, GLOG_minloglevel="2"))
    assert victim.read_bytes()[:4] == b"\x89HDF"   # overwritten with an HDF5 file
