"""A sample index to try the service on, built offline in seconds: the embedded digits written as
PNG files in class folders, indexed with a given model, or with the small net at random weights
(what the tests and the load benchmark use: the code paths and costs are a trained model's).

>>> import tempfile
>>> paths = write_digit_images(tempfile.mkdtemp(), limit=3)
>>> [Path(p).parent.name for p in paths]
['0', '1', '2']
"""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from .. import backends, netgen
from ..datasets import digits
from ..encode import Model, resize_bilinear
from ..proto import write_text
from ..search import workflow

SIZE = 32  # the digits' record size in prepare, and the small net's input


def write_digit_images(folder, limit=None, size=SIZE):
    """The embedded digits (scikit-learn's 1,797) as ``folder/<label>/<row>.png``, RGB, upscaled
    to ``size`` as prepare does; returns the paths."""
    images, labels = digits.load_images()
    count = len(images) if limit is None else min(int(limit), len(images))
    paths = []
    for row in range(count):
        pixels = np.clip(np.round(resize_bilinear(images[row], (size, size))), 0, 255)
        path = Path(folder) / str(int(labels[row])) / f"{row:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def untrained_model(folder, bits=12, seed=1):
    """The small net's deploy prototxt and random weights, written in ``folder``: a
    :class:`~dlbhc_caffe.encode.Model`.

    The weights are He-scaled Gaussians (numpy, seeded), zero biases: the net is then a random
    projection whose codes still keep similar pictures close. (The net's own fillers start conv1
    so small that every fc7 unit is zero after ReLU, and every code the same.)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deploy, weights = folder / "deploy.prototxt", folder / "random.caffemodel"
    write_text(netgen.small.deploy_net(bits), deploy)
    torch_backend = backends.get("torch")
    net = torch_backend.Net(str(deploy), torch_backend.TEST)
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        weight = blobs[0].data
        fan_in = int(np.prod(weight.shape[1:]))
        weight[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape)
        if len(blobs) > 1:
            blobs[1].data[...] = 0.0
    net.save(str(weights))
    return Model.from_files(deploy, weights, mean_values=[128.0])


def build_sample_index(folder, model, out, backend="torch", limit=None):
    """Digit images in ``folder`` (written unless there), indexed with ``model`` into ``out``."""
    images = Path(folder)
    if not images.is_dir():
        write_digit_images(images, limit=limit)
    paths, labels = workflow.scan_images(images)
    features = model.encoder(backend=backend, batch_size=100).encode_images(paths, labels)
    meta = {"model": model.to_meta(), "source": {"folder": str(images.resolve())}}
    return workflow.index_features(features, meta).save(out)


class LocalServer:
    """``tools/serve.py`` in a child process on 127.0.0.1 and a free port, ready when entered,
    stopped when left (a context manager): for tests and the load benchmark. ``log``: a file
    for the server's output (default: dropped).
    """

    def __init__(self, index, args=(), timeout=120.0, log=None):
        self.port = None
        self.timeout = timeout
        self.log = log
        tool = Path(__file__).resolve().parents[2] / "tools" / "serve.py"
        self.command = [sys.executable, str(tool), "--index", str(index), *args,
                        "--log-level", "warning"]
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command[:4] + ["--port", str(self.port)]
                                        + self.command[4:], stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tools/serve.py exited with {self.process.returncode} "
                                   f"before answering (log: {self.log})")
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"tools/serve.py did not answer within {self.timeout:.0f} s")

    def __exit__(self, *exc):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except Exception:  # noqa: BLE001 (a stuck server is killed, whatever went wrong)
                self.process.kill()
                self.process.wait()
