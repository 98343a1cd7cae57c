"""A caffemodel cut short (weights for the first layers only) is refused by encoding, the demo,
evaluate and search on both engines, naming the layers it lacks; --allow-missing-weights lets it
through explicitly (and shows why it is refused: every code comes out alike)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import unavailable
from PIL import Image

from dlbhc_caffe import proto
from dlbhc_caffe.encode import Encoder
from dlbhc_caffe.rules.weights import ALLOW_FLAG, MissingWeightsError, check_model_weights
from test_demo import TINY_DEPLOY, demo_module, random_caffemodel

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _engine(backend):
    from dlbhc_caffe import backends

    if backend not in backends.available():
        unavailable(f"backend {backend} is not available")


def cut_short(weights, path, keep):
    """`weights` with only the first `keep` layers that hold blobs, as a truncated download
    cut at a layer boundary would leave it."""
    model = proto.read_net(weights)
    out = proto.pb.NetParameter(name=model.name)
    kept = 0
    for layer in model.layer:
        if len(layer.blobs):
            if kept == keep:
                break
            kept += 1
        out.layer.add().CopyFrom(layer)
    proto.write_binary(out, path)
    return path


@pytest.fixture
def tiny(tmp_path):
    """A 6-bit deploy net, its full caffemodel, one cut after conv1, and three images."""
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(TINY_DEPLOY.replace("BITS", "6"))
    full = random_caffemodel(deploy, tmp_path / "full.caffemodel")
    partial = cut_short(full, tmp_path / "partial.caffemodel", keep=1)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in range(4)))
    return {"deploy": deploy, "full": full, "partial": partial, "list": tmp_path / "list.txt",
            "images": [tmp_path / f"{i}.png" for i in range(4)]}


def test_the_rule_names_every_missing_learnable_layer(tiny):
    assert check_model_weights(tiny["deploy"], tiny["full"]) == []
    with pytest.raises(MissingWeightsError) as err:
        check_model_weights(tiny["deploy"], tiny["partial"])
    message = str(err.value)
    assert "fc7, fc8_kevin" in message and "conv1" not in message.split("layer(s)")[1]
    assert ALLOW_FLAG in message and "\n" not in message
    assert check_model_weights(tiny["deploy"], tiny["partial"],
                               allow_missing=True) == ["fc7", "fc8_kevin"]


def test_a_layer_with_another_blob_count_is_always_refused(tiny, tmp_path):
    model = proto.read_net(tiny["full"])
    del model.layer[1].blobs[1]  # conv1 without its bias: Caffe aborts on this
    proto.write_binary(model, tmp_path / "nobias.caffemodel")
    with pytest.raises(MissingWeightsError, match=r"conv1 \(1 in the weights, 2 in the net\)"):
        check_model_weights(tiny["deploy"], tmp_path / "nobias.caffemodel", allow_missing=True)


def test_v1_nets_are_read_in_the_current_format(tmp_path):
    """A V1 deploy (as the authors released theirs) is upgraded before its layers are counted."""
    deploy = tmp_path / "v1.prototxt"
    deploy.write_text(
        'input: "data" input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9\n'
        'layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 } }\n'
        'layers { name: "fc7" type: INNER_PRODUCT bottom: "conv1" top: "fc7"\n'
        '  inner_product_param { num_output: 5 } }\n')
    full = random_caffemodel(deploy, tmp_path / "v1.caffemodel")
    assert check_model_weights(deploy, full) == []
    with pytest.raises(MissingWeightsError, match="layer\\(s\\) fc7 of"):
        check_model_weights(deploy, cut_short(full, tmp_path / "cut.caffemodel", keep=1))


@pytest.mark.parametrize("backend", ["caffe", "torch"])
def test_encoding_refuses_before_the_engine_and_allows_on_request(backend, tiny):
    _engine(backend)
    with pytest.raises(MissingWeightsError, match="fc7, fc8_kevin"):
        Encoder.from_files(tiny["deploy"], tiny["partial"], backend=backend)
    # allowed: the layers keep their (absent: zero) fillers, so every image gets the same code
    encoder = Encoder.from_files(tiny["deploy"], tiny["partial"], backend=backend,
                                 allow_missing_weights=True)
    codes = encoder.encode_images(tiny["images"]).codes
    assert (codes == codes[0]).all()
    full = Encoder.from_files(tiny["deploy"], tiny["full"], backend=backend)
    assert full.encode_images(tiny["images"]).codes.shape == (4, 6)


@pytest.mark.parametrize("backend", ["caffe", "torch"])
def test_the_demo_refuses_it(backend, tiny, tmp_path, capsys):
    _engine(backend)
    args = ["--deploy", str(tiny["deploy"]), "--list", str(tiny["list"]), "--backend", backend,
            "--k", "2", "--quiet"]
    out = tmp_path / "out"
    assert demo_module().main([*args, "--model", str(tiny["partial"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fc7, fc8_kevin" in err and ALLOW_FLAG in err and not out.exists()
    assert demo_module().main([*args, "--model", str(tiny["partial"]), "--out", str(out),
                               ALLOW_FLAG]) == 0
    assert (out / "codes.npz").is_file()


def _tool(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["caffe", "torch"])
def test_evaluate_and_search_refuse_it(backend, tiny, digits_data_root, tmp_path):
    _engine(backend)
    digits_deploy = tmp_path / "digits.prototxt"  # 1 x 3 x 32 x 32 inputs, as digits' records
    digits_deploy.write_text(TINY_DEPLOY.replace("BITS", "6").replace("dim: 16 dim: 16",
                                                                        "dim: 32 dim: 32"))
    full = random_caffemodel(digits_deploy, tmp_path / "digits.caffemodel")
    partial = cut_short(full, tmp_path / "digits_partial.caffemodel", keep=2)
    out = tmp_path / "eval"
    done = _tool("tools/evaluate.py", "--deploy", digits_deploy, "--model", partial,
                 "--dataset", "digits", "--root", digits_data_root, "--backend", backend,
                 "--top-k", 10, "--out", out, "--quiet")
    assert done.returncode == 2 and "fc8_kevin" in done.stderr and ALLOW_FLAG in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    allowed = _tool("tools/evaluate.py", "--deploy", digits_deploy, "--model", partial,
                    "--dataset", "digits", "--root", digits_data_root, "--backend", backend,
                    "--top-k", 10, "--quiet", ALLOW_FLAG)
    assert allowed.returncode == 0, allowed.stderr
    index = tmp_path / "images.index"
    done = _tool("tools/search.py", "index", "--deploy", tiny["deploy"], "--model",
                 tiny["partial"], "--folder", tiny["list"].parent, "--out", index, "--backend",
                 backend)
    assert done.returncode == 2 and "fc7, fc8_kevin" in done.stderr
    assert "Traceback" not in done.stderr and not index.exists()
