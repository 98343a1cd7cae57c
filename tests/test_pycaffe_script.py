"""A pycaffe user's script (tests/pycaffe_scripts/classify_and_finetune.py: load a net, preprocess
an image with caffe.io.Transformer, forward, read fc7, fine-tune with SGDSolver, save) runs
unchanged under real Caffe and under `python -m dlbhc_caffe.pycaffe`, each in a child process,
with the same numbers: fc7 and the probabilities within 1e-5 (relative to the largest value),
the losses of the fine-tuning steps and the saved weights within 1e-4.

The model is CaffeNet-shaped but small (67 x 67 inputs); the fine-tuning net has no dropout and
its data no random crop or mirror, so that both engines see the same computation.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from dlbhc_caffe.datasets.db import write_records
from dlbhc_caffe.proto import blob_to_array, read_net, write_blob

pytestmark = [pytest.mark.caffe, pytest.mark.slow]

SCRIPT = ROOT / "tests" / "pycaffe_scripts" / "classify_and_finetune.py"
FORWARD_LIMIT, STEP_LIMIT = 1e-5, 1e-4

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 24 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 32 kernel_size: 5 pad: 2 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool2" top: "fc6"
        inner_product_param { num_output: 64 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 48 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
        inner_product_param { num_output: 10 } }
"""

DEPLOY = """name: "SmallCaffeNet"
input: "data"
input_shape { dim: 10 dim: 3 dim: 67 dim: 67 }
""" + BODY + """layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

TRAIN_VAL = """name: "SmallCaffeNet"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ mean_file: "{mean}" }}
        data_param {{ source: "{lmdb}" backend: LMDB batch_size: 4 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ mean_file: "{mean}" }}
        data_param {{ source: "{lmdb}_test" backend: LMDB batch_size: 2 }} }}
""" + BODY.replace("{", "{{").replace("}", "}}") + """
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy"
        include {{ phase: TEST }} }}
"""

SOLVER = """net: "{net}"
test_iter: 1
test_interval: 1000
base_lr: 0.001
lr_policy: "step"
gamma: 0.1
stepsize: 2
momentum: 0.9
weight_decay: 0.0005
display: 1
max_iter: 100
snapshot_prefix: "{prefix}"
"""


def make_model(folder):
    """deploy.prototxt, weights (random, He-scaled), mean.binaryproto, an image, an LMDB."""
    from dlbhc_caffe.backends import torch as engine  # noqa: PLC0415

    rng = np.random.default_rng(21)
    (folder / "deploy.prototxt").write_text(DEPLOY)
    net = engine.Net(str(folder / "deploy.prototxt"), engine.TEST)
    for name, blobs in net.params.items():
        fan_in = blobs[0].count // blobs[0].shape[0]
        spread = 0.005 if name == "fc8" else np.sqrt(2.0 / fan_in)  # fc8: unsaturated softmax
        blobs[0].data[...] = rng.normal(0, spread, blobs[0].shape)
        blobs[1].data[...] = rng.normal(0, 0.05, blobs[1].shape)
    net.save(str(folder / "weights.caffemodel"))
    mean = rng.uniform(90, 140, (1, 3, 67, 67)).astype(np.float32)
    write_blob(mean, folder / "mean.binaryproto")
    y, x = np.mgrid[0:90, 0:120]
    pixels = np.stack([128 + 100 * np.sin(x / 9.0), 128 + 90 * np.cos(y / 7.0),
                       255 * ((x + y) % 40 > 20)], axis=-1)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / "cat.png")
    images = rng.integers(0, 256, size=(12, 3, 67, 67), dtype=np.uint8)
    # Caffe's DataReader cannot serve a train and a test net the same source in one process.
    write_records(folder / "train_lmdb", [(images[i], int(i % 10)) for i in range(8)],
                  backend="lmdb")
    write_records(folder / "train_lmdb_test", [(images[i], int(i % 10)) for i in range(8, 12)],
                  backend="lmdb")


def run(folder, who, command):
    out = folder / who
    out.mkdir()
    net = out / "train_val.prototxt"
    net.write_text(TRAIN_VAL.format(mean=folder / "mean.binaryproto", lmdb=folder / "train_lmdb"))
    solver = out / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net, prefix=out / "snap"))
    args = [str(folder / "deploy.prototxt"), str(folder / "weights.caffemodel"),
            str(folder / "mean.binaryproto"), str(folder / "cat.png"), str(solver),
            str(out / "finetuned")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2")
    done = subprocess.run(command + [str(SCRIPT)] + args, cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{who}: {done.stderr[-3000:]}"
    return dict(np.load(out / "finetuned.npz")), read_net(out / "finetuned.caffemodel"), \
        done.stdout


def rel(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def test_classic_script_same_numbers_on_both_engines(caffe, tmp_path):
    make_model(tmp_path)
    theirs, caffe_model, caffe_out = run(tmp_path, "caffe", [sys.executable])
    ours, torch_model, torch_out = run(tmp_path, "torch",
                                       [sys.executable, "-m", "dlbhc_caffe.pycaffe"])
    predicted = [out.splitlines()[1].split()[2] for out in (caffe_out, torch_out)]
    assert predicted[0] == predicted[1]  # "predicted class: N ..."
    assert float((theirs["fc7"] > 0).mean()) > 0.2  # fc7 is alive
    assert 0.2 < float(theirs["prob"].max()) < 0.9  # and the softmax is not saturated
    figures = {"fc7": rel(ours["fc7"], theirs["fc7"]), "prob": rel(ours["prob"], theirs["prob"]),
               "losses": rel(ours["losses"], theirs["losses"])}
    assert figures["fc7"] <= FORWARD_LIMIT and figures["prob"] <= FORWARD_LIMIT, figures
    assert figures["losses"] <= STEP_LIMIT, figures
    theirs_blobs = {layer.name: layer.blobs for layer in caffe_model.layer if layer.blobs}
    for layer in torch_model.layer:
        for i, proto in enumerate(layer.blobs):
            ours_w, theirs_w = blob_to_array(proto), blob_to_array(theirs_blobs[layer.name][i])
            figures[f"{layer.name}[{i}]"] = rel(ours_w, theirs_w)
            assert figures[f"{layer.name}[{i}]"] <= STEP_LIMIT, (layer.name, i, figures)
    initial = {layer.name: layer.blobs for layer in
               read_net(tmp_path / "weights.caffemodel").layer if layer.blobs}
    moved = rel(blob_to_array(theirs_blobs["fc8"][0]), blob_to_array(initial["fc8"][0]))
    assert moved > 1e-4  # the fine-tuning did change the weights
    print(textwrap.shorten(f"largest relative differences: {figures}", 2000))
