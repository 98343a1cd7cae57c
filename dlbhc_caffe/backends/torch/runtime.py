"""Process-wide engine state, as Caffe keeps it in its `Caffe` singleton: the mode (CPU or GPU),
the device, the random seed, the arithmetic precision and the log verbosity.

Nets pick their device when they are built (call `set_mode_gpu()` first, as with pycaffe). Random
draws -- fillers, crops, mirrors, dropout masks -- come from generators seeded from one global
seed: `set_random_seed(s)` (or a solver's `random_seed`) makes a run repeatable. The draws follow
Caffe's distributions, not Caffe's random streams.
"""
import hashlib
import logging
import os
import threading

import numpy as np
import torch

LOG = logging.getLogger("dlbhc_caffe.torch")

PRECISIONS = ("float32", "tf32", "bf16")

_lock = threading.Lock()
_state = {
    "mode": "cpu",
    "device_id": 0,
    "precision": "float32",
    "seed_sequence": np.random.SeedSequence(),
}


def set_mode_cpu():
    """Run nets built from now on the CPU (the default)."""
    _state["mode"] = "cpu"


def set_mode_gpu():
    """Run nets built from now on the CUDA device chosen by `set_device` (default 0)."""
    if not torch.cuda.is_available():
        raise RuntimeError("set_mode_gpu: PyTorch sees no CUDA device here "
                           f"(torch {torch.__version__}); use set_mode_cpu()")
    _state["mode"] = "gpu"
    _apply_precision()


def set_device(device_id):
    """The CUDA device used in GPU mode (Caffe's `set_device`)."""
    device_id = int(device_id)
    if device_id < 0:
        raise ValueError(f"set_device: device id must be >= 0, got {device_id}")
    if torch.cuda.is_available() and device_id >= torch.cuda.device_count():
        raise ValueError(f"set_device: device {device_id} does not exist "
                         f"({torch.cuda.device_count()} CUDA device(s))")
    _state["device_id"] = device_id


def check_device(gpu):
    """Raise BackendUnavailable (an ImportError) unless CUDA device `gpu` can be used; None
    means the CPU, always available."""
    if gpu is None:
        return
    try:
        from .. import BackendUnavailable  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the seam module is part of the package
        BackendUnavailable = RuntimeError
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"GPU {gpu} requested, but PyTorch {torch.__version__} sees no "
                                 "CUDA device (a CPU-only build, or no driver): train on the "
                                 "CPU, or install a CUDA build of torch")
    if not 0 <= int(gpu) < torch.cuda.device_count():
        raise BackendUnavailable(f"GPU {gpu} requested; PyTorch sees "
                                 f"{torch.cuda.device_count()} CUDA device(s)")


def device():
    """The torch.device that nets built now run on."""
    if _state["mode"] == "gpu":
        return torch.device("cuda", _state["device_id"])
    return torch.device("cpu")


def set_precision(precision="float32"):
    """Arithmetic of GPU convolutions and matrix products.

    "float32" (default): exact float32, as Caffe computes. "tf32": TensorFloat-32 tensor cores
    for convolutions and matrix products (about 1e-3 relative error). "bf16": bfloat16 autocast
    of each layer's computation on CUDA (blobs stay float32). The CPU always computes float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _state["precision"] = precision
    _apply_precision()


def precision():
    return _state["precision"]


def _apply_precision():
    tf32 = _state["precision"] == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if _state["mode"] == "gpu":
        # Exactness first: cuDNN's autotuner may pick non-deterministic kernels.
        torch.backends.cudnn.benchmark = _state["precision"] != "float32"


def set_random_seed(seed):
    """Seed every random draw made from now on (Caffe's `set_random_seed`)."""
    with _lock:
        _state["seed_sequence"] = np.random.SeedSequence(int(seed) & (2 ** 64 - 1))


def next_seed():
    """A fresh 63-bit seed drawn from the global seed sequence (one per net, layer, loader)."""
    with _lock:
        child = _state["seed_sequence"].spawn(1)[0]
    return int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def set_verbose(verbose):
    """True: log INFO lines (solver progress, as Caffe's glog); False: warnings only."""
    LOG.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose and not LOG.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(handler)


def default_workers():
    """Threads that decode and transform records for one data layer."""
    return max(1, min(4, (os.cpu_count() or 1)))


class NetContext:
    """What layers need from their net: the device and seeded generators."""

    def __init__(self, device, seed):
        self.device = torch.device(device)
        self.seed = int(seed)
        self.filler_generator = torch.Generator().manual_seed(self.seed)
        self._generators = {}

    def layer_seed(self, name):
        digest = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    def generator(self, device):
        """A torch generator on `device` for draws made while running (dropout masks)."""
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.layer_seed(f"run:{key}"))
            self._generators[key] = gen
        return self._generators[key]


_apply_precision()
