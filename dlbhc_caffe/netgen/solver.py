"""The solver prototxt: the original's SGD settings, or the small net's.

>>> from dlbhc_caffe.netgen.solver import make_solver
>>> s = make_solver("train_val.prototxt", "KevinNet_CIFAR10_48")
>>> s.stepsize, s.max_iter, s.test_interval, s.snapshot
(25000, 50000, 100, 10000)
"""
from ..proto import pb

# solver_CIFAR10_48.prototxt (stepsize = max_iter / 2 there; kept so when max_iter changes).
PAPER_SOLVER = dict(base_lr=0.001, lr_policy="step", gamma=0.1, max_iter=50000, momentum=0.9,
                    weight_decay=0.0005, test_iter=100, test_interval=100, snapshot=10000,
                    display=20)
# The small net from scratch (docs/small-net.md): lr 0.01, momentum 0.9, ~1000 iterations.
SMALL_SOLVER = dict(base_lr=0.01, lr_policy="step", gamma=0.1, max_iter=1000, momentum=0.9,
                    weight_decay=0.0005, test_iter=100, test_interval=200, snapshot=500,
                    display=20)
SOLVER_MODES = ("CPU", "GPU")


def check_solver_settings(*, base_lr, max_iter, test_iter, test_interval, snapshot, display,
                          stepsize=None, gamma=0.1, momentum=0.9, weight_decay=0.0005,
                          solver_mode="CPU", random_seed=None, lr_policy="step"):
    """Raise ValueError naming the first setting Caffe would reject or that makes no sense."""
    positive = dict(max_iter=max_iter, test_iter=test_iter, test_interval=test_interval,
                    display=display)
    if stepsize is not None:
        positive["stepsize"] = stepsize
    for field, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if not isinstance(snapshot, int) or snapshot < 0:
        raise ValueError(f"snapshot must be an integer >= 0 (0: no snapshots), got {snapshot!r}")
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if solver_mode.upper() not in SOLVER_MODES:
        raise ValueError(f"solver_mode must be CPU or GPU, got {solver_mode!r}")
    if random_seed is not None and (not isinstance(random_seed, int) or random_seed < 0):
        raise ValueError(f"seed must be an integer >= 0, got {random_seed!r}")


def make_solver(net, snapshot_prefix, *, base_lr=0.001, lr_policy="step", gamma=0.1,
                stepsize=None, max_iter=50000, momentum=0.9, weight_decay=0.0005, test_iter=100,
                test_interval=100, snapshot=10000, display=20, solver_mode="CPU",
                random_seed=None):
    """A SolverParameter for the train_val at path `net` (defaults: the original's settings).

    stepsize defaults to max_iter // 2 (the original: 25000 of 50000). Snapshots are written to
    `<snapshot_prefix>_iter_N.caffemodel` / `.solverstate`.
    """
    if stepsize is None:
        stepsize = max(1, max_iter // 2)
    check_solver_settings(base_lr=base_lr, max_iter=max_iter, test_iter=test_iter,
                          test_interval=test_interval, snapshot=snapshot, display=display,
                          stepsize=stepsize, gamma=gamma, momentum=momentum,
                          weight_decay=weight_decay, solver_mode=solver_mode,
                          random_seed=random_seed)
    solver = pb.SolverParameter(
        net=str(net), test_interval=test_interval, base_lr=base_lr, display=display,
        max_iter=max_iter, lr_policy=lr_policy, gamma=gamma, momentum=momentum,
        weight_decay=weight_decay, stepsize=stepsize, snapshot=snapshot,
        snapshot_prefix=str(snapshot_prefix),
        solver_mode=pb.SolverParameter.SolverMode.Value(solver_mode.upper()))
    solver.test_iter.append(test_iter)
    if random_seed is not None:
        solver.random_seed = random_seed
    return solver
