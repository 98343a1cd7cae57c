"""Figures of the evaluation: precision@k against the paper's baselines.

The baselines are the precision@k curves (48 bits, CIFAR-10, k = 100..1000) of the hashing methods
the paper compares against (BRE, CNNH, CNNH+, ITQ, ITQ-CCA, KSH, LSH, MLH, SH), as plotted by
the original analysis script; they ship in ``dlbhc_caffe/data/baselines``.

>>> baselines = load_baselines()
>>> sorted(baselines)[:3]
['BRE', 'CNNH', 'CNNH+']
>>> baselines["CNNH+"][0][:2].tolist()
[100, 200]
"""
import os
from pathlib import Path

import numpy as np

__all__ = ["BASELINES_DIR", "load_baselines", "plot_precision_at_k", "is_cifar10"]

BASELINES_DIR = Path(__file__).resolve().parent / "data" / "baselines"
_SUFFIX = "-p-at-k.txt"


def load_baselines(directory=BASELINES_DIR):
    """{method: (k int array, precision float array)} from ``<method>-p-at-k.txt`` files."""
    directory = Path(directory)
    files = sorted(directory.glob("*" + _SUFFIX))
    if not files:
        raise FileNotFoundError(f"{directory}: no baseline curves (*{_SUFFIX}) found.")
    baselines = {}
    for path in files:
        table = np.loadtxt(path, ndmin=2)
        if table.shape[1] != 2:
            raise ValueError(f"{path}: expected two columns (k, precision); got "
                             f"{table.shape[1]}.")
        baselines[path.name[: -len(_SUFFIX)]] = (table[:, 0].astype(np.int64), table[:, 1])
    return baselines


def is_cifar10(manifest=None, n_database=None, n_queries=None, labels=None):
    """True when an evaluation is the paper's CIFAR-10 protocol, where its baselines apply: a
    prepared dataset whose source is cifar10 (its dataset.json), or -- for codes from files,
    which name no dataset -- CIFAR-10's 50,000 database and 10,000 query items in 10 classes.

    >>> is_cifar10({"dataset": "cifar10"}), is_cifar10({"dataset": "list"})
    (True, False)
    >>> is_cifar10(n_database=50000, n_queries=10000, labels=range(10))
    True
    """
    if manifest is not None:
        return manifest.get("dataset") == "cifar10"
    return (n_database, n_queries) == (50000, 10000) and labels is not None \
        and len(np.unique(np.asarray(list(labels)))) == 10


def plot_precision_at_k(precision, path, *, label="DLBHC (ours)", baselines=True, title=None):
    """Save a precision@k figure (k = 1..len(precision)), with the paper's baselines.

    ``baselines``: True (the shipped curves), False, or a dict like :func:`load_baselines`'s.
    The shipped curves are CIFAR-10's at 48 bits: draw them only for CIFAR-10 (see
    :func:`is_cifar10`). The image format follows the file name (.png, .pdf, .svg).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI

    precision = np.asarray(precision, dtype=np.float64)
    if precision.ndim != 1 or precision.size == 0:
        raise ValueError(f"Expected precision as a 1-D array (k = 1..K); got shape "
                         f"{precision.shape}.")
    if baselines is True:
        baselines = load_baselines()
    figure = Figure(figsize=(8.0, 4.8))
    axes = figure.add_subplot()
    ks = np.arange(1, precision.size + 1)
    axes.plot(ks, precision, color="red", linewidth=2, label=label)
    markers = "osd^v<>ph*"
    for i, (name, (k, p)) in enumerate(sorted((baselines or {}).items())):
        keep = k <= precision.size
        axes.plot(k[keep], p[keep], marker=markers[i % len(markers)], linewidth=1, label=name)
    axes.set_xlabel("number of top retrieved images (k)")
    axes.set_ylabel("precision@k")
    axes.set_xlim(0, precision.size)
    axes.set_ylim(0, 1)
    axes.grid(True, alpha=0.3)
    axes.set_title(title or "precision@k, Hamming ranking")
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small",
                title="baselines: 48 bits,\nCIFAR-10 (paper)" if baselines else None,
                title_fontsize="small")
    figure.tight_layout()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    figure.savefig(path, dpi=100, format=fmt)
    return path
