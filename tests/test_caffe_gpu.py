"""The CUDA build of Caffe (scripts/build_caffe.sh --cuda) beside the CPU-only one.

Each build's pycaffe runs in a child process of its own (PYTHONPATH=<tree>/python, which comes
before the venv's .pth): in CPU mode the CUDA build must compute exactly what the CPU-only build
computes, and every GPU request on a machine without a usable GPU must end in one line naming the
device and the reason, never in a Caffe CHECK abort. Both trees are found through the files
.venv/caffe_home.cpu and .venv/caffe_home.cuda that the build script writes (`make test` builds
both; this module runs last, see conftest.py).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, unavailable

pytestmark = pytest.mark.caffe

VARIANTS = ("cpu", "cuda")


def wait_for_variant_build(timeout=3600):
    """Under `make test` (scripts/run_tests.sh) the second variant builds in the background while
    the suite runs; this module runs last and waits for it. Raises unavailable() when it failed."""
    status = os.environ.get("DLBHC_VARIANT_BUILD_STATUS")
    if not status:
        return
    status, deadline = Path(status), time.time() + timeout
    while not status.is_file():
        if time.time() > deadline:
            unavailable(f"the background Caffe build did not finish in {timeout} s "
                        f"(log: {os.environ.get('DLBHC_VARIANT_BUILD_LOG')})")
        time.sleep(5)
    if status.read_text().strip() != "0":
        log = Path(os.environ.get("DLBHC_VARIANT_BUILD_LOG", "/dev/null"))
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
        unavailable(f"the background Caffe build failed (exit {status.read_text().strip()}; "
                    f"log: {log}): {' | '.join(tail)}")


def caffe_home(variant):
    """The cached tree of one variant, as scripts/build_caffe.sh recorded it.

    `make test` builds both (the one this machine uses in setup, the other in the background
    while the suite runs: waited for here); outside it, `make caffe-variants` builds them."""
    wait_for_variant_build()
    marker = ROOT / ".venv" / f"caffe_home.{variant}"
    if not marker.is_file():
        unavailable(f"the {variant} Caffe build is not recorded ({marker} is missing); run "
                    f"`make caffe-variants`")
    home = Path(marker.read_text().strip())
    if not (home / ".dlbhc-complete").is_file():
        unavailable(f"{home} is not a finished build; run `make caffe-variants`")
    return home


def gpu_present():
    """Whether the driver lists a GPU here (then GPU requests must work instead of failing)."""
    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return False
    done = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "GPU " in done.stdout


def child_env(home, *extra_path):
    """The environment of a child that imports `home`'s pycaffe: no LD_LIBRARY_PATH (rpaths
    only), one BLAS thread (same summation order in both builds), Caffe's log quiet."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join([str(home / "python"), str(ROOT), *map(str, extra_path)]),
               OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2")
    return env


def run_python(home, code, *args, extra_path=(), timeout=600):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=ROOT, env=child_env(home, *extra_path), capture_output=True,
                          text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------- CPU mode: same numbers

# Forward, backward and three SGD steps of the net in `argv[1]` with solver `argv[2]`, in CPU
# mode; prints {stage: {blob: sha256 of its bytes}} as JSON.
_DIGESTS = """
import hashlib, json, sys
import numpy as np
import caffe
assert caffe.__file__.startswith(sys.argv[3]), caffe.__file__
caffe.set_mode_cpu()
solver = caffe.SGDSolver(sys.argv[2])
net = solver.net
rng = np.random.RandomState(0)
net.blobs["data"].data[...] = rng.uniform(-100, 100, net.blobs["data"].data.shape)
net.blobs["label"].data[...] = rng.randint(0, 10, net.blobs["label"].data.shape)
def digest(arrays):
    return {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            for name, a in arrays}
out = {}
net.forward()
out["forward"] = digest((n, b.data) for n, b in net.blobs.items())
net.backward()
out["backward"] = digest((f"{n}[{i}]", p.diff) for n, ps in net.params.items()
                         for i, p in enumerate(ps))
out["backward_data"] = digest([("data", net.blobs["data"].diff)])
solver.step(3)
out["sgd3"] = digest((f"{n}[{i}]", p.data) for n, ps in net.params.items()
                     for i, p in enumerate(ps))
out["loss"] = float(net.blobs["loss"].data)
print(json.dumps(out))
"""


def kevinnet_shaped(folder, batch=2):
    """KevinNet (CaffeNet body, fc8_kevin 48 + sigmoid, 10-way classifier) on Input layers, with
    an SGD solver of the paper's settings; returns (net, solver) paths."""
    from dlbhc_caffe import proto  # noqa: PLC0415
    from dlbhc_caffe.netgen import caffenet, kevinnet  # noqa: PLC0415
    from dlbhc_caffe.netgen import layers as L  # noqa: PLC0415
    from dlbhc_caffe.proto import pb  # noqa: PLC0415

    inputs = [L.input((batch, 3, 227, 227)), L.input((batch,), name="label_input", top="label")]
    net = kevinnet.hashify("KevinNet", inputs, caffenet.caffenet_layers(), 48, 10)
    net_path, solver_path = folder / "kevinnet.prototxt", folder / "solver.prototxt"
    proto.write_text(net, net_path)
    solver = pb.SolverParameter(net=str(net_path), base_lr=0.001, momentum=0.9,
                                weight_decay=0.0005, lr_policy="step", gamma=0.1,
                                stepsize=25000, max_iter=3, random_seed=7, display=0,
                                snapshot_after_train=False, solver_mode=pb.SolverParameter.CPU)
    proto.write_text(solver, solver_path)
    return net_path, solver_path


@pytest.mark.slow
def test_cuda_build_in_cpu_mode_is_bit_identical_to_the_cpu_build(tmp_path):
    net, solver = kevinnet_shaped(tmp_path)
    results = {}
    for variant in VARIANTS:
        home = caffe_home(variant)
        done = run_python(home, _DIGESTS, net, solver, home)
        assert done.returncode == 0, f"{variant}: {done.stderr[-3000:]}"
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    cpu, cuda = results["cpu"], results["cuda"]
    assert len(cpu["forward"]) > 15 and len(cpu["sgd3"]) == 2 * 9  # 9 learnable layers
    for stage in ("forward", "backward", "backward_data", "sgd3"):
        differ = sorted(k for k in cpu[stage] if cpu[stage][k] != cuda[stage].get(k))
        assert not differ, f"{stage}: the CUDA build differs from the CPU build in {differ}"
    assert cpu["loss"] == cuda["loss"]


# ---------------------------------------------------------------- GPU requests without a GPU

@pytest.fixture(scope="module")
def no_gpu():
    if gpu_present():
        unavailable("nvidia-smi lists a GPU here: GPU requests are expected to work "
                    "(scripts/gpu_check.sh measures them)", hardware=True)


def assert_one_line(stderr, *needles):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    for abort in ("Check failed", "stack trace", "Traceback", "Aborted"):
        assert abort not in stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_caffe_device_query_fails_cleanly(no_gpu, variant):
    tool = caffe_home(variant) / "build" / "tools" / "caffe"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["GLOG_minloglevel"] = "1"
    for gpu in ("0", "all"):
        done = subprocess.run([str(tool), "device_query", "-gpu", gpu], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 1, done.stderr[-3000:]
        reason = "built CPU_ONLY" if variant == "cpu" else ""
        assert_one_line(done.stderr, f"caffe: GPU {gpu} cannot be used: ", reason,
                        "run without -gpu")


_SET_MODE_GPU = """
import sys
from dlbhc_caffe import backends
from dlbhc_caffe.errors import DlbhcError
engine = backends.get("caffe")
assert engine.module.__file__.startswith(sys.argv[1]), engine.module.__file__
for call in (engine.set_mode_gpu, lambda: engine.set_device(0)):
    try:
        call()
    except DlbhcError as err:
        print(err)
    else:
        sys.exit("no error")
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_mode_gpu_through_the_backend_fails_cleanly(no_gpu, variant):
    home = caffe_home(variant)
    done = run_python(home, _SET_MODE_GPU, home)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], done.stdout
    assert lines[0].startswith(f"GPU 0 cannot be used by Caffe ({home}"), lines[0]
    if variant == "cpu":
        assert "this Caffe is built CPU_ONLY" in lines[0]
    else:  # the CUDA runtime's own reason, from the probe
        assert "CUDA" in lines[0] and "driver 580" in lines[0], lines[0]


def test_train_on_gpu_with_the_cuda_build_fails_cleanly(no_gpu, digits_data_root, tmp_path):
    home = caffe_home("cuda")
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--bits", "12", "--net", "small",
         "--dataset", "digits", "--root", str(digits_data_root), "--out", str(out),
         "--max-iter", "2", "--gpu", "0", "--backend", "caffe", "--no-progress"],
        cwd=ROOT, env=child_env(home), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_one_line(done.stderr, "GPU 0 cannot be used by Caffe", str(home), "CUDA")
    assert not out.exists()


def test_probe_answers_for_a_missing_device_number(no_gpu):
    """A device number past the end gets the runtime's reason too (no GPU: no devices)."""
    home = caffe_home("cuda")
    done = run_python(home, """
        from dlbhc_caffe import backends
        print(backends.get("caffe").gpu_problem(7))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() and done.stdout.strip() != "None"


# ---------------------------------------------------------------- scripts/gpu_check.sh

GLIBC = ("libc.so", "libm.so", "libdl.so", "librt.so", "libpthread.so", "libresolv.so",
         "libutil.so", "ld-linux", "linux-vdso")
CUDA = ("libcudart.so", "libcublas.so", "libcublasLt.so", "libcurand.so")


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """The GPU check's every step, in CPU mode and small, from the staged tools and libraries
    as they would travel (the GPU machine itself is not available to the tests)."""
    import re  # noqa: PLC0415

    home = caffe_home("cuda")
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["DLBHC_GPU_CHECK_WORK"] = str(work)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = (work / "report.txt").read_text()
    assert "CPU dry run" in report
    assert re.search(r"forward\+backward CPU vs CPU, KevinNet batch 2: worst .* max_rel "
                     r"0\.000e\+00", report), report
    assert re.search(r"caffe time, KevinNet batch 2 227x227, forward-backward: [0-9.]+ ms",
                     report), report
    assert re.search(r"caffe train, KevinNet from LMDB \(20 records 3x256x256, crop 227\), "
                     r"batch 2, iterations 2-4: [0-9.]+ images/s; 50,000 iterations: [0-9.]+ h",
                     report), report
    assert re.search(r"torch backend \(float32\), same solver and LMDB: [0-9.]+ images/s; "
                     r"50,000 iterations: [0-9.]+ h", report), report
    # What travels: every library the tools load, except glibc's and CUDA's, is in the bundle.
    lib = work / "lib"
    assert (lib / "libcaffe.so.1.0.0-rc3").is_file() or any(lib.glob("libcaffe.so*"))
    bundle_env = dict(env, LD_LIBRARY_PATH=f"{lib}:{home.parent / 'cuda-13.0.1/nvidia/cu13/lib'}")
    for tool in ("caffe", "gpu_check_probe"):
        listing = subprocess.run(["ldd", str(work / "bin" / tool)], env=bundle_env,
                                 capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            name = line.split()[0]
            if "=>" not in line or name.startswith(GLIBC + CUDA):
                continue
            assert f"=> {lib}/" in line, f"{tool}: {line.strip()} does not come from the bundle"


@pytest.mark.slow
def test_gpu_check_bundle_holds_what_travels(tmp_path):
    """`--prepare`: the tools, their libraries, the nets and the Python 3.12 wheels, in one file
    well under the 64 MiB a call may carry."""
    import tarfile  # noqa: PLC0415

    caffe_home("cuda")
    bundle = tmp_path / "bundle.tar.xz"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["DLBHC_GPU_CHECK_BUNDLE"] = str(bundle)
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--prepare"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert bundle.stat().st_size < 60 * 1024 * 1024
    with tarfile.open(bundle) as tar:
        names = [name.lstrip("./") for name in tar.getnames()]
    for wanted in ("bin/caffe", "bin/gpu_check_probe", "nets/compare.prototxt",
                   "nets/time.prototxt", "nets/train.prototxt", "nets/solver.prototxt"):
        assert wanted in names, wanted
    assert any(n.startswith("lib/libcaffe.so") for n in names)
    wheels = [n for n in names if n.startswith("wheels/") and n.endswith(".whl")]
    for package in ("protobuf", "lmdb", "pillow", "tqdm"):
        # for CPython 3.12: its own tag, the stable ABI, or pure Python
        assert any(w.lower().startswith(f"wheels/{package}-") and
                   any(tag in w for tag in ("cp312", "abi3", "py3-none")) for w in wheels), \
            (package, wheels)
