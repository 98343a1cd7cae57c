"""demo.py: the digits default end to end; the authors' released deploy file with any weights."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import unavailable
from PIL import Image

from dlbhc_caffe import proto
from dlbhc_caffe.netgen.shapes import blob_shapes
from dlbhc_caffe.search import load_index

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def demo_module():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_backend():
    from dlbhc_caffe import backends

    if not backends.available():
        unavailable("no engine (caffe or torch) imports here")


# ---------------------------------------------------------------- a caffemodel of a deploy's shape

def _blob(array):
    """A BlobProto of `array`, its float data appended in protobuf's packed wire format (field 5)
    so a CaffeNet-sized blob does not pass through a Python list."""
    head = proto.pb.BlobProto()
    head.shape.dim.extend(array.shape)
    payload = np.ascontiguousarray(array, "<f4").tobytes()
    length, varint = len(payload), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    blob = proto.pb.BlobProto()
    blob.ParseFromString(head.SerializeToString() + b"\x2a" + bytes(varint) + payload)
    return blob


def random_caffemodel(deploy, path, seed=0, std=0.01):
    """A caffemodel with gaussian weights for every Convolution / InnerProduct of `deploy`."""
    net = proto.read_net(deploy)
    shapes = blob_shapes(net)
    rng = np.random.default_rng(seed)
    model = proto.pb.NetParameter(name=net.name)
    for layer in net.layer:
        out = model.layer.add(name=layer.name, type=layer.type)
        if layer.type == "Convolution":
            p = layer.convolution_param
            k = list(p.kernel_size) or [p.kernel_h, p.kernel_w]
            kh, kw = (k[0], k[0]) if len(k) == 1 else k[:2]
            channels = shapes[layer.bottom[0]][1] // (p.group or 1)
            weights = (p.num_output, channels, kh, kw)
        elif layer.type == "InnerProduct":
            weights = (layer.inner_product_param.num_output,
                       int(np.prod(shapes[layer.bottom[0]][1:])))
        else:
            continue
        out.blobs.append(_blob(rng.normal(0, std, size=weights).astype(np.float32)))
        out.blobs.append(_blob(np.full(weights[0], 0.1, np.float32)))
    proto.write_binary(model, path)
    return path


def test_random_caffemodel_has_the_deploys_shapes(tmp_path):
    deploy = tmp_path / "tiny.prototxt"
    deploy.write_text(
        'input: "data" input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9\n'
        'layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 group: 1 } }\n'
        'layers { name: "fc7" type: INNER_PRODUCT bottom: "conv1" top: "fc7"\n'
        '  inner_product_param { num_output: 5 } }\n')
    model = proto.read_net(random_caffemodel(deploy, tmp_path / "tiny.caffemodel"))
    shapes = {layer.name: [proto.blob_shape(b) for b in layer.blobs] for layer in model.layer}
    assert shapes["conv1"] == [(4, 3, 3, 3), (4,)]
    assert shapes["fc7"] == [(5, 196), (5,)]
    weights = proto.blob_to_array(model.layer[1].blobs[0])
    assert 0.005 < weights.std() < 0.02


# ---------------------------------------------------------------- the released deploy file

@pytest.mark.slow
def test_released_deploy_runs_through_demo(fixtures_dir, tmp_path):
    require_backend()
    deploy = fixtures_dir / "models" / "KevinNet_CIFAR10_48_deploy.prototxt"
    weights = random_caffemodel(deploy, tmp_path / "random48.caffemodel")
    images = sorted((fixtures_dir / "imgs").glob("*.jpg"))
    names = sorted({p.stem.rstrip("0123456789") for p in images})
    (tmp_path / "img_list.txt").write_text(
        "".join(f"{p} {names.index(p.stem.rstrip('0123456789'))}\n" for p in images))
    out = tmp_path / "out"
    rc = demo_module().main(["--deploy", str(deploy), "--model", str(weights),
                             "--mean", str(fixtures_dir / "models" / "imagenet_mean.binaryproto"),
                             "--list", str(tmp_path / "img_list.txt"), "--out", str(out),
                             "--k", "5", "--fine", "--quiet"])
    assert rc == 0
    with np.load(out / "codes.npz") as codes:
        assert codes["codes"].shape == (12, 48) and codes["fc7"].shape == (12, 4096)
        assert codes["latent"].shape == (12, 48)
        np.testing.assert_array_equal(codes["codes"], codes["latent"] > 0.5)
        assert codes["paths"].tolist() == [str(p) for p in images]
        assert np.all(codes["fc7"] >= 0)                       # after relu7
    from scipy.io import loadmat

    assert loadmat(out / "codes.mat")["codes"].shape == (12, 48)
    index = load_index(out / "images.index")
    assert (index.ntotal, index.bits, index.fc7_dim) == (12, 48, 4096)
    with Image.open(out / "montage.png") as picture:
        assert picture.size[0] > 6 * 96


# ---------------------------------------------------------------- the digits default

def _check_digits_outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    top = np.array(summary["top_labels_hamming"])
    labels = np.array(summary["query_labels"])
    assert top.shape == (300, 10)
    same = (top == labels[:, None]).sum(axis=1)
    # at least 8 of a query's top 10 share its label, for most queries
    assert np.mean(same >= 8) > 0.5, f"only {np.mean(same >= 8):.1%} of the queries"
    assert summary["queries_with_8_of_top_10_same_label"] == pytest.approx(np.mean(same >= 8))
    assert summary["map@100"] > 0.5
    for name in ("database.npz", "database.mat", "queries.npz", "queries.mat",
                 "database.index"):
        assert (out / name).is_file(), name
    with Image.open(out / "montage.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 10 * 96
    index = load_index(out / "database.index")
    assert index.bits == 12 and index.ntotal == summary["n_database"]
    assert index.labels is not None and index.fc7 is not None


def test_demo_without_arguments_reuses_a_trained_run(trained_small_run, tmp_path, monkeypatch):
    trained = trained_small_run  # the session's small model (tests/conftest.py)
    run_dir, data_root = Path(trained["run"]), Path(trained["root"])
    # a working directory where the default data/digits and runs/digits_small_12 already exist
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits_small_12").symlink_to(run_dir, target_is_directory=True)
    (tmp_path / "data").symlink_to(data_root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert demo_module().main([]) == 0
    _check_digits_outputs(tmp_path / "out" / "demo")


@pytest.mark.slow
def test_demo_on_a_fresh_machine(tmp_path):
    """`python demo.py` in an empty folder: prepares the digits, trains, indexes, queries."""
    if not (IN_CI or os.environ.get("DLBHC_FULL_DEMO") == "1"):
        unavailable("trains a second model (minutes): runs under CI=true or DLBHC_FULL_DEMO=1")
    require_backend()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--quiet"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mAP@100" in done.stdout
    _check_digits_outputs(tmp_path / "out" / "demo")
    # a second run reuses the data and the model
    again = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--quiet"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the trained model" in again.stdout


def test_demo_bad_input_is_a_clear_error(tmp_path, capsys):
    demo = demo_module()
    assert demo.main(["--deploy", str(tmp_path / "none.prototxt"), "--model",
                      str(tmp_path / "none.caffemodel"), "--list", str(tmp_path / "l.txt"),
                      "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("l.txt" in err or "none.prototxt" in err)
    assert not (tmp_path / "out").exists()
    assert demo.main(["--deploy", "x.prototxt", "--list", "l.txt"]) == 2
    assert "--deploy and --model go together" in capsys.readouterr().err


TINY_DEPLOY = """
name: "Tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "fc7" type: "InnerProduct" bottom: "conv1" top: "fc7" inner_product_param { num_output: 8 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8_kevin" type: "InnerProduct" bottom: "fc7" top: "fc8_kevin" inner_product_param { num_output: BITS } }
layer { name: "fc8_kevin_encode" type: "Sigmoid" bottom: "fc8_kevin" top: "fc8_kevin_encode" }
"""


@pytest.mark.parametrize("backend", [pytest.param("caffe", marks=pytest.mark.caffe), "torch"])
def test_weights_of_another_shape_are_refused_before_the_engine(backend, tmp_path, capsys):
    from dlbhc_caffe import backends

    if backend not in backends.available():
        unavailable(f"backend {backend} is not available")
    (tmp_path / "d8.prototxt").write_text(TINY_DEPLOY.replace("BITS", "8"))
    (tmp_path / "d6.prototxt").write_text(TINY_DEPLOY.replace("BITS", "6"))
    weights = random_caffemodel(tmp_path / "d6.prototxt", tmp_path / "w6.caffemodel")
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("0.png\n1.png\n2.png\n")
    args = ["--model", str(weights), "--list", str(tmp_path / "list.txt"), "--backend", backend,
            "--k", "2", "--quiet"]
    # the right deploy works: 6-bit codes of three images
    assert demo_module().main(["--deploy", str(tmp_path / "d6.prototxt"), *args,
                               "--out", str(tmp_path / "ok")]) == 0
    with np.load(tmp_path / "ok" / "codes.npz") as codes:
        assert codes["codes"].shape == (3, 6) and codes["fc7"].shape == (3, 8)
    # a deploy of 8 bits cannot take 6-bit weights: an error naming the layer, no crash
    assert demo_module().main(["--deploy", str(tmp_path / "d8.prototxt"), *args,
                               "--out", str(tmp_path / "bad")]) == 2
    assert "fc8_kevin" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
