"""Solvers with Caffe's loop and update rules (solver.cpp, sgd_solver.cpp and its siblings).

One iteration (Solver::Step): clear the param diffs; test when `iter % test_interval == 0`
(at 0 only with test_initialization); forward + backward `iter_size` times, accumulating;
ApplyUpdate: learning rate from the policy, clip the global L2 norm of all diffs to
clip_gradients, divide by iter_size, add weight decay (local_decay = weight_decay * decay_mult;
L2 adds local_decay * W, L1 local_decay * sign(W)), compute the update per solver type with
local_rate = rate * lr_mult, then W -= update; iter += 1; snapshot when `iter % snapshot == 0`.

Updates (g = the regularized diff, h = history, lr = local_rate):
  SGD       h = momentum h + lr g;                      update = h
  Nesterov  h' = momentum h + lr g;                     update = (1 + momentum) h' - momentum h
  Adam      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  t = iter + 1
            update = lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)
  AdaGrad   h += g^2;                                   update = lr g / (sqrt(h) + delta)
  RMSProp   h = rms_decay h + (1 - rms_decay) g^2;      update = lr g / (sqrt(h) + delta)
  AdaDelta  h1 = m h1 + (1 - m) g^2;  u = g sqrt((h2 + delta) / (h1 + delta));
            h2 = m h2 + (1 - m) u^2;                    update = lr u

Snapshots are `<snapshot_prefix>_iter_<N>.caffemodel` and `.solverstate` (SolverState: iter,
learned_net, history, current_step) that real Caffe restores, and the other way round. Paths in
the solver file (net, train_net, test_net, snapshot_prefix) are taken as they are, relative to
the working directory, as Caffe does.
"""
import math
from collections import deque

import numpy as np
import torch

from ...proto import ProtoError, pb, read_net, read_solver, read_solverstate, upgrade_solver, \
    write_binary
from ...rules.outputs import output_lines
from ...rules.schedule import learning_rate
from ...rules.solver import SolverError, check_history, check_snapshot_prefix, check_solver, \
    due, final_snapshot_due, history_count, snapshot_paths, solver_nets, test_due
from . import runtime
from .blob import decode_blob, encode_blob
from .net import Net, NetError

LOG = runtime.LOG


def _f32(value):
    return float(np.float32(value))


class Solver:
    """Caffe's Solver with pycaffe's surface: `net`, `test_nets`, `iter`, `step(n)`, `solve()`,
    `snapshot()`, `restore(path)`, `add_callback(on_start, on_gradients_ready)`."""

    type = "SGD"

    def __init__(self, solver, **unused):
        if unused:
            raise TypeError(f"unexpected arguments {sorted(unused)}")
        if isinstance(solver, pb.SolverParameter):
            self.param = upgrade_solver(solver)
            self._source = "<SolverParameter>"
        else:
            self._source = str(solver)
            try:
                self.param = read_solver(solver)
            except ProtoError as err:
                raise SolverError(str(err)) from None
        self._check()
        if self.param.random_seed >= 0:
            runtime.set_random_seed(self.param.random_seed)
        self.net, self.test_nets = self._build_nets()
        for test_net in self.test_nets:
            test_net.share_with(self.net)
            test_net.forward_only = True
        self.iter = 0
        self.current_step = 0
        device = self.net.device
        params = self.net.learnable_params
        self.history = [torch.zeros(params[i % len(params)].shape, dtype=torch.float32,
                                    device=device)
                        for i in range(history_count(self.type, len(params)))]
        self._callbacks = []
        self._losses = deque(maxlen=max(1, self.param.average_loss))
        self.last_test_scores = []
        self.requested_early_exit = False

    # ---- construction (Caffe's Init, InitTrainNet, InitTestNets: the rules are rules.solver's)
    def _fail(self, message):
        raise SolverError(f"{self._source}: {message}")

    def _check(self):
        try:
            check_solver(self.param, self.type)
            if self.param.snapshot > 0:
                check_snapshot_prefix(self.param)
        except SolverError as err:
            self._fail(err)
        if self.param.snapshot_format == pb.SolverParameter.HDF5:
            self._fail("snapshot_format HDF5 is not supported by the torch backend; use "
                       "BINARYPROTO")

    def _build_nets(self):
        try:
            nets = solver_nets(self.param, read_net)
        except SolverError as err:
            self._fail(err)
        built = []
        for i, (phase, net_param, source) in enumerate(nets):
            what = "train net" if i == 0 else f"test net #{i - 1}"
            try:
                built.append(Net(net_param))
            except NetError as err:
                self._fail(f"{what} ({source}): {err}")
        return built[0], built[1:]

    # ---- the loop
    def add_callback(self, on_start, on_gradients_ready):
        """Call `on_start()` before and `on_gradients_ready()` after each forward/backward."""
        self._callbacks.append((on_start, on_gradients_ready))

    @property
    def smoothed_loss(self):
        """Mean of the last `average_loss` training losses (as Caffe displays it)."""
        if not self._losses:
            return float("nan")
        return float(torch.stack(list(self._losses)).mean())

    def step(self, iters):
        """Run `iters` iterations (Caffe's Solver::Step)."""
        p = self.param
        stop_iter = self.iter + int(iters)
        self._losses.clear()
        last = len(self.net.layers) - 1
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if test_due(p, self.iter):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = due(p.display, self.iter)
            loss = None
            for _ in range(p.iter_size):
                term = self.net._forward_tensor(0, last)
                self.net._backward(last, 0)
                term = term if term is not None else torch.zeros((), device=self.net.device)
                loss = term if loss is None else loss + term
            self._losses.append((loss / p.iter_size).detach())
            if display:
                self._display()
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self.apply_update()
            self.iter += 1
            if due(p.snapshot, self.iter):
                self.snapshot()

    def _display(self):
        LOG.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        values = {name: np.asarray(self.net.blobs[name].data).ravel()
                  for name in self.net.outputs}
        for line in output_lines("Train", values, self.net.blob_loss_weights):
            LOG.info("%s", line)

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve), restoring `resume_file` first if given."""
        p = self.param
        LOG.info("Solving %s", self.net.name)
        LOG.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            LOG.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if final_snapshot_due(p, self.iter):
            self.snapshot()
        if self.requested_early_exit:
            LOG.info("Optimization stopped early.")
            return
        if due(p.display, self.iter):
            with torch.no_grad():
                loss = self.net._forward_tensor(0, len(self.net.layers) - 1)
            self._losses.append(loss if loss is not None
                                else torch.zeros((), device=self.net.device))
            LOG.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        if due(p.test_interval, self.iter):
            self.test_all()
        LOG.info("Optimization Done.")

    def test_all(self):
        """Run every test net for its test_iter batches; returns and logs the mean outputs."""
        self.last_test_scores = [self.test(i) for i in range(len(self.test_nets))]
        return self.last_test_scores

    def test(self, net_id=0):
        """Caffe's Solver::Test: {output blob: mean value (a float, or a list per element)}."""
        p = self.param
        LOG.info("Iteration %d, Testing net (#%d)", self.iter, net_id)
        net = self.test_nets[net_id]
        net.share_with(self.net)
        iters = p.test_iter[net_id]
        sums, loss = {}, torch.zeros((), device=net.device)
        with torch.no_grad():
            for _ in range(iters):
                iter_loss = net._forward_tensor(0, len(net.layers) - 1)
                if p.test_compute_loss and iter_loss is not None:
                    loss = loss + iter_loss
                for name in net.outputs:
                    value = net.blobs[name].tensor().reshape(-1)
                    sums[name] = value.clone() if name not in sums else sums[name] + value
        if p.test_compute_loss:
            LOG.info("Test loss: %g", float(loss) / max(iters, 1))
        means = {name: (sums[name].cpu().numpy() / iters) if iters else
                 np.zeros(net.blobs[name].count, np.float32) for name in net.outputs}
        for line in output_lines("Test", means, net.blob_loss_weights):
            LOG.info("%s", line)
        return {name: float(m[0]) if m.size == 1 else m.tolist() for name, m in means.items()}

    # ---- the update (Caffe's SGDSolver::ApplyUpdate and friends)
    def learning_rate(self):
        """The rate at the current iteration (updates current_step for step/multistep)."""
        rate, step = learning_rate(self.param, self.iter, self.current_step)
        if step != self.current_step and self.param.lr_policy == "multistep":
            LOG.info("MultiStep Status: Iteration %d, step = %d", self.iter, step)
        self.current_step = step
        return rate

    def apply_update(self):
        p = self.param
        rate = self.learning_rate()
        if due(p.display, self.iter):
            LOG.info("Iteration %d, lr = %g", self.iter, rate)
        params = self.net.learnable_params
        lr_mults, decay_mults = self.net.params_lr, self.net.params_weight_decay
        with torch.no_grad():
            diffs = [blob.diff_tensor() for blob in params]
            self._clip(diffs)
            for i, blob in enumerate(params):
                diff, data = diffs[i], blob.tensor()
                if p.iter_size > 1:
                    diff.mul_(_f32(1.0 / p.iter_size))
                decay = _f32(_f32(p.weight_decay) * _f32(decay_mults[i]))
                if decay:
                    if p.regularization_type == "L2":
                        diff.add_(data, alpha=decay)
                    else:
                        diff.add_(torch.sign(data), alpha=decay)
                local_rate = _f32(rate * _f32(lr_mults[i]))
                self.compute_update(i, diff, local_rate)
            for blob, diff in zip(params, diffs):
                blob.tensor().sub_(diff)

    def _clip(self, diffs):
        clip = _f32(self.param.clip_gradients)
        if clip < 0 or not diffs:
            return
        sumsq = torch.zeros((), dtype=torch.float32, device=diffs[0].device)
        for diff in diffs:
            sumsq = sumsq + (diff * diff).sum()
        norm = torch.sqrt(sumsq)
        scale = torch.where(norm > clip, clip / norm, torch.ones_like(norm))
        for diff in diffs:
            diff.mul_(scale)

    def compute_update(self, i, diff, local_rate):
        """Turn the regularized gradient `diff` of learnable param i into its update, in place."""
        momentum = _f32(self.param.momentum)
        history = self.history[i]
        history.mul_(momentum).add_(diff, alpha=local_rate)
        diff.copy_(history)

    # ---- snapshots
    def snapshot(self):
        """Write <prefix>_iter_<iter>.caffemodel and .solverstate; returns their paths."""
        model, state_path = (str(p) for p in snapshot_paths(self.param, self.iter))
        LOG.info("Snapshotting to binary proto file %s", model)
        self.net.save(model, write_diff=self.param.snapshot_diff)
        LOG.info("Snapshotting solver state to binary proto file %s", state_path)
        state = pb.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
        for h in self.history:
            state.history.add().MergeFromString(encode_blob(h.detach().cpu().numpy()))
        write_binary(state, state_path)
        return model, state_path

    def restore(self, path):
        """Continue from a .solverstate (ours or real Caffe's): iter, current_step, history,
        and the weights of its learned_net."""
        if str(path).endswith(".h5"):
            raise SolverError(f"{path}: HDF5 solver states are not supported by the torch "
                              "backend")
        try:
            state = read_solverstate(path)
        except ProtoError as err:
            raise SolverError(str(err)) from None
        shapes = [tuple(p.shape) for p in self.net.learnable_params]
        check_history(state.history, shapes, self.type, path)
        values = [decode_blob(proto).reshape(tuple(h.shape))
                  for proto, h in zip(state.history, self.history)]
        if state.HasField("learned_net") and state.learned_net:
            self.net.copy_from(state.learned_net)
        self.iter = state.iter
        self.current_step = state.current_step
        for h, array in zip(self.history, values):
            h.copy_(torch.from_numpy(array))

    def close(self):
        """Stop the data loaders of the train and test nets."""
        for net in [self.net] + self.test_nets:
            net.close()


class SGDSolver(Solver):
    type = "SGD"


class NesterovSolver(Solver):
    type = "Nesterov"

    def compute_update(self, i, diff, local_rate):
        momentum = _f32(self.param.momentum)
        history = self.history[i]
        previous = history.clone()
        history.mul_(momentum).add_(diff, alpha=local_rate)
        diff.copy_(history * (1.0 + momentum) - previous * momentum)


class AdamSolver(Solver):
    type = "Adam"

    def compute_update(self, i, diff, local_rate):
        p = self.param
        beta1, beta2, eps = _f32(p.momentum), _f32(p.momentum2), _f32(p.delta)
        n = len(self.history) // 2
        m, v = self.history[i], self.history[i + n]
        t = self.iter + 1
        correction = _f32(math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t))
        m.mul_(beta1).add_(diff, alpha=_f32(1.0 - beta1))
        v.mul_(beta2).add_(diff * diff, alpha=_f32(1.0 - beta2))
        diff.copy_(m / (v.sqrt() + eps) * _f32(local_rate * correction))


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def compute_update(self, i, diff, local_rate):
        eps = _f32(self.param.delta)
        history = self.history[i]
        history.add_(diff * diff)
        diff.copy_(diff / (history.sqrt() + eps) * local_rate)


class RMSPropSolver(Solver):
    type = "RMSProp"

    def compute_update(self, i, diff, local_rate):
        decay, eps = _f32(self.param.rms_decay), _f32(self.param.delta)
        history = self.history[i]
        history.mul_(decay).add_(diff * diff, alpha=_f32(1.0 - decay))
        diff.copy_(diff / (history.sqrt() + eps) * local_rate)


class AdaDeltaSolver(Solver):
    type = "AdaDelta"

    def compute_update(self, i, diff, local_rate):
        momentum, eps = _f32(self.param.momentum), _f32(self.param.delta)
        n = len(self.history) // 2
        grads, updates = self.history[i], self.history[i + n]
        grads.mul_(momentum).add_(diff * diff, alpha=_f32(1.0 - momentum))
        step = diff * ((updates + eps) / (grads + eps)).sqrt()
        updates.mul_(momentum).add_(step * step, alpha=_f32(1.0 - momentum))
        diff.copy_(step * local_rate)


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdamSolver, AdaGradSolver,
                                     RMSPropSolver, AdaDeltaSolver)}


def get_solver(solver):
    """The solver of the type named in the file (`type`, or the old `solver_type`)."""
    if isinstance(solver, pb.SolverParameter):
        param = upgrade_solver(solver)
    else:
        try:
            param = read_solver(solver)
        except ProtoError as err:
            raise SolverError(str(err)) from None
    if param.type not in SOLVERS:
        raise SolverError(f"{solver}: unknown solver type '{param.type}' (known: "
                          f"{', '.join(SOLVERS)})")
    return SOLVERS[param.type](solver)


__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdamSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "SOLVERS", "get_solver", "SolverError"]
