"""loss.png: the training loss and the test outputs against iterations (matplotlib, Agg).

>>> import tempfile, os
>>> from dlbhc_caffe.train.log import History
>>> h = History(train_loss=[(0, 2.3), (20, 1.1)], test={"accuracy": [(0, 0.1), (20, 0.7)]})
>>> path = plot_history(h, os.path.join(tempfile.mkdtemp(), "loss.png"))
>>> path.stat().st_size > 0
True
"""
from pathlib import Path

from ..fileio import atomic_path


def plot_history(history, path, title=None):
    """Write a PNG of `history` (a log.History) to `path`, whole or not at all; returns the path.

    Top: training loss (and test losses, when the test net reports one). Bottom: test accuracy
    (every other non-loss test output), when there is any.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no global state)

    path = Path(path)
    scores = {n: v for n, v in history.test.items() if "loss" not in n.lower()}
    test_losses = {n: v for n, v in history.test.items() if "loss" in n.lower()}
    rows = 2 if scores else 1
    fig = Figure(figsize=(7, 3.2 * rows), dpi=100)
    ax = fig.add_subplot(rows, 1, 1)
    if history.train_loss:
        its, values = zip(*history.train_loss)
        ax.plot(its, values, label="train loss", lw=1)
    for name, series in test_losses.items():
        its, values = zip(*series)
        ax.plot(its, values, "o-", label=f"test {name}", ms=3)
    ax.set_ylabel("loss")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if history.train_loss or test_losses:
        ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    if scores:
        ax2 = fig.add_subplot(rows, 1, 2, sharex=ax)
        for name, series in scores.items():
            its, values = zip(*series)
            ax2.plot(its, values, "o-", label=f"test {name}", ms=3)
        ax2.set_ylabel("test output")
        ax2.set_xlabel("iteration")
        ax2.set_ylim(0, max(1.0, max(v for s in scores.values() for _, v in s)))
        ax2.grid(alpha=0.3)
        ax2.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
