"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), for logging and for checks.

The engine applies the schedule itself; this is the same arithmetic in Python, so the training
log can print `Iteration N, lr = X` like Caffe does and a resumed run can be checked against it.
`current_step` is the solver's step counter that a .solverstate holds ("multistep" advances it at
most once an iteration; "step" recomputes it as iter // stepsize).

>>> from dlbhc_caffe.proto import pb
>>> s = pb.SolverParameter(base_lr=0.001, lr_policy="step", gamma=0.1, stepsize=25000)
>>> [f"{learning_rate(s, i)[0]:g}" for i in (24999, 25000)]      # Caffe prints 6 digits
['0.001', '0.0001']
>>> m = pb.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[2, 4])
>>> [learning_rate(m, i, step)[0] for i, step in [(1, 0), (2, 0), (4, 1)]]
[1.0, 0.5, 0.25]
"""
import math

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def learning_rate(solver, iteration, current_step=0):
    """(rate, current_step after this iteration) of SolverParameter `solver` at `iteration`.

    Raises ValueError naming the policy when it is unknown or lacks a field it needs.
    """
    policy = solver.lr_policy or "fixed"
    base = solver.base_lr
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        if solver.stepsize <= 0:
            raise ValueError(f"lr_policy 'step' needs stepsize > 0, got {solver.stepsize}")
        step = iteration // solver.stepsize
        return base * solver.gamma ** step, step
    if policy == "exp":
        return base * solver.gamma ** iteration, current_step
    if policy == "inv":
        return base * (1 + solver.gamma * iteration) ** (-solver.power), current_step
    if policy == "multistep":
        if current_step < len(solver.stepvalue) and iteration >= solver.stepvalue[current_step]:
            current_step += 1
        return base * solver.gamma ** current_step, current_step
    if policy == "poly":
        if solver.max_iter <= 0:
            raise ValueError("lr_policy 'poly' needs max_iter > 0")
        return base * (1 - iteration / solver.max_iter) ** solver.power, current_step
    if policy == "sigmoid":
        return base / (1 + math.exp(-solver.gamma * (iteration - solver.stepsize))), current_step
    raise ValueError(f"unknown lr_policy {policy!r}: Caffe knows {', '.join(POLICIES)}")


def schedule_state(solver, iteration):
    """The solver's current_step after `iteration` updates from the start (as a snapshot holds)."""
    step = 0
    for i in range(iteration):
        _, step = learning_rate(solver, i, step)
    return step
