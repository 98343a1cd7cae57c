"""The engine seam: one pycaffe-shaped surface over real Caffe or PyTorch.

`get(name)` returns a module-like backend with pycaffe's surface -- `Net`, `SGDSolver`,
`get_solver`, `TRAIN`, `TEST`, `set_mode_cpu`, `set_mode_gpu`, `set_device`, `set_random_seed` --
and a `name` ("caffe" or "torch"). Nothing else in the package imports caffe or torch; code that
runs a net asks this module for an engine.

- "caffe": real BVLC Caffe through pycaffe (`dlbhc_caffe.backends.caffe`), built by `make setup`.
- "torch": the same prototxt/caffemodel files executed by PyTorch (`dlbhc_caffe.backends.torch`).
- "auto": caffe when it imports, else torch.

Each backend is imported on first use, never at import time of this module.

>>> from dlbhc_caffe import backends
>>> backends.NAMES
('caffe', 'torch')
>>> backends.get("tensorflow")
Traceback (most recent call last):
...
ValueError: unknown backend 'tensorflow': choose one of auto, caffe, torch
"""
import importlib
import sys
from ..errors import DlbhcError

NAMES = ("caffe", "torch")

# What to do when a backend's engine is missing, by backend name.
_INSTALL = {
    "caffe": ("real Caffe (pycaffe) is not importable in this Python ({python}): {error}. "
              "Build it with `make setup` (scripts/build_caffe.sh builds BVLC Caffe into a cache "
              "and links it into .venv), or use --backend torch"),
    "torch": ("PyTorch is not importable in this Python ({python}): {error}. Install its CPU "
              "build with `pip install torch==2.13.0` (an unpinned torch pulls a CUDA build of "
              "several GB), or use --backend caffe"),
}


class BackendUnavailable(DlbhcError, ImportError):
    """The engine a backend needs is not installed; the message says how to install it."""


_import = importlib.import_module  # the tests replace it to simulate a missing engine


def _load(name):
    module_name = f"{__name__}.{name}"
    try:
        return _import(module_name)
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        if missing == module_name:
            raise BackendUnavailable(f"backend {name!r}: its module {module_name} is not part of "
                                     f"this installation") from err
        message = _INSTALL[name].format(python=sys.executable, error=err)
        raise BackendUnavailable(message) from err


def get(name="auto", verbose=None):
    """The backend `name` ("auto", "caffe" or "torch"), imported on first use.

    verbose: True shows the engine's own log (Caffe's glog INFO lines), False keeps it quiet
    (errors only); None leaves it as it is (quiet by default).

    Raises BackendUnavailable (an ImportError) naming what is missing and how to install it.

    >>> get("auto").name in NAMES                      # doctest: +SKIP
    True
    """
    if name not in ("auto",) + NAMES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(('auto',) + NAMES)}")
    if name == "auto":
        errors = []
        for candidate in NAMES:
            try:
                return get(candidate, verbose=verbose)
            except BackendUnavailable as err:
                errors.append(str(err))
        raise BackendUnavailable("no backend is available:\n  - " + "\n  - ".join(errors))
    backend = _load(name)
    if verbose is not None and hasattr(backend, "set_verbose"):
        backend.set_verbose(verbose)
    return backend


def available():
    """The names of the backends that import here, in preference order.

    >>> set(available()) <= set(NAMES)
    True
    """
    names = []
    for name in NAMES:
        try:
            _load(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


__all__ = ["get", "available", "NAMES", "BackendUnavailable"]
