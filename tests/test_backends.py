"""The engine seam (dlbhc_caffe.backends) and the caffe backend's checks in Python.

Every net that validate_net rejects here is also run through real Caffe in a child process, which
must abort on it: the checks catch what would otherwise kill the Python process, and the valid
nets they accept must build and run.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from dlbhc_caffe import backends, proto
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import pb

SURFACE = ("Net", "SGDSolver", "get_solver", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu",
           "set_device", "set_random_seed")


# ---------------------------------------------------------------- get / available

def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tf': choose one of auto, caffe, torch"):
        backends.get("tf")


@pytest.fixture
def engines_missing(monkeypatch):
    """Make `import caffe` / `import torch` fail inside the backend modules."""
    def fake_import(module_name):
        engine = module_name.rsplit(".", 1)[-1]
        raise ModuleNotFoundError(f"No module named '{engine}'", name=engine)

    monkeypatch.setattr(backends, "_import", fake_import)


def test_missing_caffe_says_how_to_build_it(engines_missing):
    with pytest.raises(backends.BackendUnavailable) as err:
        backends.get("caffe")
    assert "No module named 'caffe'" in str(err.value)
    assert "make setup" in str(err.value) and "--backend torch" in str(err.value)
    assert isinstance(err.value, ImportError)


def test_missing_torch_says_how_to_install_it(engines_missing):
    with pytest.raises(backends.BackendUnavailable, match=r"pip install torch==2\.13\.0"):
        backends.get("torch")


def test_auto_without_any_engine_lists_both(engines_missing):
    with pytest.raises(backends.BackendUnavailable) as err:
        backends.get("auto")
    message = str(err.value)
    assert "no backend is available" in message
    assert "make setup" in message and "pip install torch==2.13.0" in message
    assert backends.available() == []


def test_a_missing_backend_module_is_not_blamed_on_the_engine(monkeypatch):
    def fake_import(module_name):
        raise ModuleNotFoundError(f"No module named '{module_name}'", name=module_name)

    monkeypatch.setattr(backends, "_import", fake_import)
    with pytest.raises(backends.BackendUnavailable, match="not part of this installation"):
        backends.get("torch")


def test_caffe_backend_has_pycaffes_surface(caffe):
    engine = backends.get("caffe")
    assert engine.name == "caffe"
    for attr in SURFACE:
        if attr in ("set_mode_gpu", "set_device"):  # probe the GPU first (test_caffe_gpu.py)
            assert getattr(engine, attr) is not getattr(caffe, attr), attr
            continue
        assert getattr(engine, attr) is getattr(caffe, attr), attr
    assert engine.__version__ == caffe.__version__


def test_auto_takes_caffe_when_it_imports(caffe):
    assert backends.get("auto").name == "caffe"
    assert backends.available()[0] == "caffe"


TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 } }
"""


def _child(code, env_extra=None, timeout=120):
    """Run Python `code` in a child process from the repository root."""
    import os  # noqa: PLC0415

    env = dict(os.environ)
    env.pop("GLOG_minloglevel", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _tiny_solver(folder):
    """A solver over TINY_NET; building it makes Caffe log INFO lines (this Caffe logs a net's
    own set-up only in debug builds)."""
    net = folder / "tiny.prototxt"
    net.write_text(TINY_NET)
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{net}" base_lr: 0.1 max_iter: 1 snapshot_prefix: "{folder}/s"')
    return solver


INFO_LINE = "Initializing solver from parameters"


@pytest.mark.parametrize("verbose", [False, True])
def test_caffe_log_is_quiet_unless_verbose(caffe, tmp_path, verbose):
    solver = _tiny_solver(tmp_path)
    out = _child(f"""
        from dlbhc_caffe import backends
        engine = backends.get("caffe", verbose={verbose})
        engine.get_solver({str(solver)!r})
        """)
    assert out.returncode == 0, out.stderr
    assert (INFO_LINE in out.stderr) is verbose, out.stderr[-2000:]


def test_verbose_can_be_turned_on_after_import(caffe, tmp_path):
    solver = _tiny_solver(tmp_path)
    out = _child(f"""
        import sys
        from dlbhc_caffe import backends
        engine = backends.get("caffe")
        engine.get_solver({str(solver)!r})
        print("---", file=sys.stderr, flush=True)
        assert engine.set_verbose(True)
        engine.get_solver({str(solver)!r})
        """)
    assert out.returncode == 0, out.stderr
    before, after = out.stderr.split("---")
    assert INFO_LINE not in before
    assert INFO_LINE in after


# ---------------------------------------------------------------- validate_net

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A LevelDB of four 3x8x8 records (labels 0..3) and an 8x8 mean."""
    folder = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    records = [(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), label) for label in range(4)]
    write_records(folder / "train_leveldb", records, "leveldb")
    proto.write_blob(rng.uniform(0, 255, (1, 3, 8, 8)), folder / "mean.binaryproto")
    proto.write_blob(rng.uniform(0, 255, (1, 3, 6, 6)), folder / "mean6.binaryproto")
    return folder


def data_net(source, transform="", backend="LEVELDB", data_type="Data", extra=""):
    return f"""
    name: "tiny_data"
    layer {{ name: "data" type: "{data_type}" top: "data" top: "label"
      transform_param {{ {transform} }}
      data_param {{ source: "{source}" batch_size: 2 backend: {backend} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    {extra}
    """


def caffe_runs(prototxt, weights=None):
    """(returncode, stderr) of building `prototxt` in real Caffe and running it forward."""
    weights_arg = f", weights={str(weights)!r}" if weights else ""
    out = _child(f"""
        import caffe
        net = caffe.Net({str(prototxt)!r}, caffe.TRAIN{weights_arg})
        net.forward()
        """, env_extra={"GLOG_minloglevel": "2"})
    return out.returncode, out.stderr


BAD_NETS = {
    "database missing": (dict(source="{d}/nowhere_leveldb"), "nowhere_leveldb does not exist"),
    "crop larger than records": (dict(transform="crop_size: 9"),
                                 "crop_size 9 is larger than the records (8x8)"),
    "mean of another size": (dict(transform='mean_file: "{d}/mean6.binaryproto"'),
                             "mean6.binaryproto is 3x6x6 (CxHxW) but the records are 3x8x8"),
    "mean file missing": (dict(transform='mean_file: "{d}/none.binaryproto"'),
                          "none.binaryproto"),
    "mean_value count": (dict(transform="mean_value: 1 mean_value: 2"),
                         "2 mean_value entries for 3-channel records"),
    "mean file and values": (dict(transform='mean_file: "{d}/mean.binaryproto" mean_value: 1'),
                             "cannot specify mean_file and mean_value"),
    "backend mismatch": (dict(backend="LMDB"), "says backend LMDB but"),
    "layer type not built": (dict(data_type="ImageData"), "needs Caffe built with OpenCV"),
}


@pytest.mark.parametrize("case", sorted(BAD_NETS))
def test_validate_net_names_what_caffe_would_abort_on(caffe, tiny_data, tmp_path, case):
    fields, expected = BAD_NETS[case]
    fields = {k: v.format(d=tiny_data) for k, v in fields.items()}
    fields.setdefault("source", str(tiny_data / "train_leveldb"))
    path = tmp_path / "net.prototxt"
    path.write_text(data_net(**fields))
    engine = backends.get("caffe")
    with pytest.raises(engine.NetValidationError) as err:
        engine.validate_net(path, "TRAIN")
    assert expected in str(err.value)
    assert "layer 'data'" in str(err.value) and str(path) in str(err.value)
    code, stderr = caffe_runs(path)
    assert code != 0, f"real Caffe accepted the net validate_net rejects ({case})"


def test_validate_net_accepts_what_caffe_runs(caffe, tiny_data, tmp_path):
    path = tmp_path / "net.prototxt"
    transform = f'crop_size: 7 mirror: true mean_file: "{tiny_data}/mean.binaryproto"'
    path.write_text(data_net(str(tiny_data / "train_leveldb"), transform))
    engine = backends.get("caffe")
    net, plan = engine.validate_net(path, "TRAIN")
    assert [layer.name for layer in net.layer] == ["data", "ip", "loss"]
    assert plan is None
    code, stderr = caffe_runs(path)
    assert code == 0, stderr


def test_validate_net_reads_layers_of_the_phase_only(caffe, tiny_data, tmp_path):
    extra = f"""layer {{ name: "test_data" type: "Data" top: "t" include {{ phase: TEST }}
                data_param {{ source: "{tiny_data}/missing" batch_size: 1 }} }}"""
    path = tmp_path / "net.prototxt"
    path.write_text(data_net(str(tiny_data / "train_leveldb"), extra=extra))
    engine = backends.get("caffe")
    engine.validate_net(path, "TRAIN")
    with pytest.raises(engine.NetValidationError, match="layer 'test_data'"):
        engine.validate_net(path, "TEST")


def test_validate_net_names_a_missing_prototxt(caffe, tmp_path):
    engine = backends.get("caffe")
    with pytest.raises(engine.NetValidationError, match="nothing.prototxt.*no such net"):
        engine.validate_net(tmp_path / "nothing.prototxt")


def _caffemodel(path, layers, legacy=False):
    """Write a caffemodel of {layer name: [array, ...]}."""
    model = pb.NetParameter(name="weights")
    for name, arrays in layers.items():
        layer = model.layer.add(name=name, type="InnerProduct")
        for array in arrays:
            blob = proto.array_to_blob(array, legacy_4d=legacy and array.ndim == 4)
            layer.blobs.add().CopyFrom(blob)
    proto.write_binary(model, path)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_validate_net_checks_weight_shapes_by_layer_name(caffe, tiny_data, tmp_path, legacy):
    path = tmp_path / "net.prototxt"
    path.write_text(data_net(str(tiny_data / "train_leveldb"), "crop_size: 6"))
    weight = np.ones((4, 3 * 6 * 6), np.float32)
    if legacy:  # old caffemodels store 4-D num/channels/height/width; Caffe pads and compares
        weight = weight[None, None]
    good = _caffemodel(tmp_path / "good.caffemodel",
                       {"ip": [weight, np.zeros(4)], "other": [np.ones(3)]}, legacy=legacy)
    engine = backends.get("caffe")
    _, plan = engine.validate_net(path, "TRAIN", weights=good)
    assert (plan.copied, plan.kept, plan.ignored) == (["ip"], [], ["other"])
    assert caffe_runs(path, good)[0] == 0

    # the records are 8x8: without the crop, ip's weights are 4 x 192
    bad = _caffemodel(tmp_path / "bad.caffemodel", {"ip": [np.ones((4, 108)), np.zeros(4)]})
    path.write_text(data_net(str(tiny_data / "train_leveldb")))
    with pytest.raises(engine.NetValidationError) as err:
        engine.validate_net(path, "TRAIN", weights=bad)
    assert "layer 'ip', param 0: shape (4, 108) in the weights, (4, 192) in the net" in \
        str(err.value)
    assert caffe_runs(path, bad)[0] != 0


def test_validate_net_counts_blobs(caffe, tiny_data, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(data_net(str(tiny_data / "train_leveldb")))
    no_bias = _caffemodel(tmp_path / "w.caffemodel", {"ip": [np.ones((4, 192))]})
    engine = backends.get("caffe")
    with pytest.raises(engine.NetValidationError, match="'ip' has 1 blobs in the weights, 2 in"):
        engine.validate_net(path, "TRAIN", weights=no_bias)


# ---------------------------------------------------------------- KevinNet in pycaffe

def test_kevinnet_runs_forward_and_backward_in_pycaffe(caffe, tmp_path):
    """KevinNet at 227x227 with 48 bits, batch 32 (the paper's), from 256x256 records."""
    from dlbhc_caffe.netgen import kevinnet  # noqa: PLC0415

    rng = np.random.default_rng(0)
    records = [(rng.integers(0, 256, (3, 256, 256), dtype=np.uint8), i % 10) for i in range(8)]
    write_records(tmp_path / "train_leveldb", records, "leveldb")
    proto.write_blob(np.full((1, 3, 256, 256), 110.0), tmp_path / "mean.binaryproto")
    net_param = kevinnet.train_val_net(48, 10, tmp_path / "train_leveldb",
                                       tmp_path / "train_leveldb",
                                       mean_file=str(tmp_path / "mean.binaryproto"))
    path = tmp_path / "train_val.prototxt"
    proto.write_text(net_param, path)
    engine = backends.get("caffe")
    engine.validate_net(path, "TRAIN")
    engine.set_mode_cpu()
    engine.set_random_seed(1)
    net = engine.Net(str(path), engine.TRAIN)
    assert net.blobs["data"].data.shape == (32, 3, 227, 227)
    out = net.forward()
    codes = net.blobs["fc8_kevin_encode"].data
    assert codes.shape == (32, 48) and ((codes > 0) & (codes < 1)).all()
    assert net.blobs["fc7"].data.shape == (32, 4096)
    assert abs(float(out["loss"]) - np.log(10)) < 0.5  # untrained: about ln(classes)
    net.backward()
    for layer in ("conv1", "fc7", "fc8_kevin", "fc8_pascal"):
        diff = net.params[layer][0].diff
        assert np.isfinite(diff).all() and np.abs(diff).sum() > 0, layer
