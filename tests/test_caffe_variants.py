"""Both variants of the Caffe build, CPU-only and CUDA (.venv/caffe_home.cpu / .cuda): rpaths,
GPU machine code, Python layers, cache keys. Runs last under `make test`, which builds the second
variant in the background meanwhile (conftest.RUN_LAST, test_caffe_gpu.caffe_home waits).
"""
import os
import subprocess
from pathlib import Path

import pytest

from test_caffe_gpu import VARIANTS, caffe_home as variant_home, run_python

pytestmark = pytest.mark.caffe

CUDA_LIBS = ("libcudart.so.13", "libcublas.so.13", "libcurand.so.10")


@pytest.mark.parametrize("binary", ["build/lib/libcaffe.so", "python/caffe/_caffe.so",
                                    "build/tools/caffe"])
def test_cuda_libraries_resolve_through_rpaths(binary):
    home = variant_home("cuda")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run(["ldd", str(home / binary)], capture_output=True, text=True, env=env,
                          check=True)
    assert "not found" not in done.stdout, done.stdout
    resolved = dict(line.strip().split(" => ", 1) for line in done.stdout.splitlines()
                    if " => " in line)
    toolkit = (home.parent / "cuda-13.0.1" / "nvidia" / "cu13" / "lib").resolve()
    for lib in CUDA_LIBS:
        assert lib in resolved, f"{binary} does not link {lib}: {done.stdout}"
        path = Path(resolved[lib].split(" (")[0])
        assert path.resolve().parent == toolkit, f"{lib} -> {path}, not from {toolkit}"
    dynamic = subprocess.run(["readelf", "-d", str(home / binary)], capture_output=True,
                             text=True, check=True).stdout
    assert "$ORIGIN/../../../cuda-13.0.1/nvidia/cu13/lib" in dynamic, dynamic


def test_cuda_build_holds_sm80_sm90_code_and_compute90_ptx():
    home = variant_home("cuda")
    cuobjdump = home.parent / "cuda-13.0.1" / "nvidia" / "cu13" / "bin" / "cuobjdump"
    lib = home / "build" / "lib" / "libcaffe.so"
    elf = subprocess.run([str(cuobjdump), "--list-elf", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    ptx = subprocess.run([str(cuobjdump), "--list-ptx", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    arches = {word.rsplit(".", 2)[-2] for line in elf.splitlines() for word in line.split()
              if word.endswith(".cubin")}
    assert arches == {"sm_80", "sm_90"}, elf[:2000]
    assert elf.count("sm_80") == elf.count("sm_90") > 50  # every .cu file, both machines
    assert {word.rsplit(".", 2)[-2] for line in ptx.splitlines() for word in line.split()
            if word.endswith(".ptx")} == {"sm_90"}, ptx[:2000]  # cuobjdump names PTX by target


def test_cpu_build_has_no_cuda():
    home = variant_home("cpu")
    done = subprocess.run(["ldd", str(home / "build" / "lib" / "libcaffe.so")],
                          capture_output=True, text=True, check=True)
    assert "libcudart" not in done.stdout and "not found" not in done.stdout


# A numpy layer y = 2x + 1, with its gradient, in a net of Input -> Python -> (forced) backward.
PY_LAYER = """
import caffe
import numpy as np


class Affine(caffe.Layer):
    def setup(self, bottom, top):
        self.scale = float(self.param_str or 2)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * np.asarray(bottom[0].data) + 1

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.scale * np.asarray(top[0].diff)
"""

PY_NET = """name: "pylayer"
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "affine" type: "Python" bottom: "x" top: "y"
  python_param { module: "dlbhc_test_pylayer" layer: "Affine" param_str: "2" } }
"""

_RUN_PY_NET = """
import sys
import numpy as np
import caffe
caffe.set_mode_cpu()
assert "Python" in caffe.layer_type_list()
net = caffe.Net(sys.argv[1], caffe.TEST)
x = np.arange(6, dtype=np.float32).reshape(2, 3)
net.blobs["x"].data[...] = x
net.forward()
assert np.array_equal(net.blobs["y"].data, 2 * x + 1), net.blobs["y"].data
net.blobs["y"].diff[...] = np.full((2, 3), 0.5, np.float32)
net.backward()
assert np.array_equal(net.blobs["x"].diff, np.ones((2, 3), np.float32)), net.blobs["x"].diff
print("python layer ok")
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_python_layer_runs_forward_and_backward(variant, tmp_path):
    home = variant_home(variant)
    (tmp_path / "dlbhc_test_pylayer.py").write_text(PY_LAYER)
    (tmp_path / "net.prototxt").write_text(PY_NET)
    done = run_python(home, _RUN_PY_NET, tmp_path / "net.prototxt", extra_path=[tmp_path])
    assert done.returncode == 0 and "python layer ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_is_keyed_and_stamped(variant):
    home = variant_home(variant)
    tag = "cpu" if variant == "cpu" else "cuda13.0"
    assert f"-{tag}-pylayer-" in home.name
    config = (home / "Makefile.config").read_text()
    assert "WITH_PYTHON_LAYER := 1" in config
    assert ("CPU_ONLY := 1" in config) == (variant == "cpu")
    if variant == "cuda":
        assert "USE_CUDNN := 0" in config
        assert "arch=compute_90,code=[sm_90,compute_90]" in config


