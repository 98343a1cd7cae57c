"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), the one copy both engines use.

The torch solver takes its rate from here; the training loop uses it to print
`Iteration N, lr = X` like Caffe does and to check a solver before real Caffe sees it (an unknown
policy is a LOG(FATAL) there, a zero stepsize a division by zero). The arithmetic is Caffe's in
float32 (its Dtype): the fields are float32 in the schema and the rate is rounded to float32.
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

import numpy as np

from ..errors import DlbhcError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class ScheduleError(DlbhcError):
    """A learning-rate policy Caffe cannot apply; the message names the policy and field."""


def _f32(value):
    return float(np.float32(value))


def check_policy(solver):
    """Raise ScheduleError unless SolverParameter `solver`'s lr_policy can run in Caffe.

    >>> from dlbhc_caffe.proto import pb
    >>> check_policy(pb.SolverParameter(lr_policy="cosine"))
    Traceback (most recent call last):
    ...
    dlbhc_caffe.rules.schedule.ScheduleError: unknown lr_policy 'cosine' (Caffe knows: fixed, step, exp, inv, multistep, poly, sigmoid)
    """
    policy = solver.lr_policy
    if policy not in POLICIES:
        name = f"'{policy}'" if policy else "'' (lr_policy is not set)"
        raise ScheduleError(f"unknown lr_policy {name} (Caffe knows: {', '.join(POLICIES)})")
    if policy == "step" and solver.stepsize <= 0:
        raise ScheduleError(f"lr_policy 'step' needs a positive stepsize, got {solver.stepsize}")
    if policy == "poly" and solver.max_iter <= 0:
        raise ScheduleError("lr_policy 'poly' needs a positive max_iter")


def learning_rate(solver, iteration, current_step=0):
    """(rate, current_step after this iteration) of SolverParameter `solver` at `iteration`.

    Raises ScheduleError (a ValueError) naming the policy when Caffe could not apply it.
    """
    check_policy(solver)
    policy, it = solver.lr_policy, int(iteration)
    base, gamma, power = _f32(solver.base_lr), _f32(solver.gamma), _f32(solver.power)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // solver.stepsize
        rate = base * gamma ** current_step
    elif policy == "exp":
        rate = base * gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-power)
    elif policy == "multistep":
        if current_step < len(solver.stepvalue) and it >= solver.stepvalue[current_step]:
            current_step += 1
        rate = base * gamma ** current_step
    elif policy == "poly":
        rate = base * (1.0 - it / solver.max_iter) ** power
    else:  # sigmoid
        rate = base / (1.0 + math.exp(-gamma * (it - solver.stepsize)))
    return _f32(rate), current_step


def schedule_state(solver, iteration):
    """The solver's current_step after `iteration` updates from the start (as a snapshot holds)."""
    step = 0
    for i in range(iteration):
        _, step = learning_rate(solver, i, step)
    return step
