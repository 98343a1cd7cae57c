"""Net: Caffe's Net with pycaffe's Python surface, executed by PyTorch.

Built as Caffe builds it: the upgraded NetParameter is filtered by the net state (phase, level,
stages: include/exclude rules), layers are created in order, each bottom names an existing blob,
a top named like the bottom at the same position is computed in place (`fc7` after `relu7` is one
blob, holding the ReLU's output; after backward its diff is the gradient at the InnerProduct's
output, as in Caffe), and the backward pass visits only the layers Caffe's rules say need it
(param lr_mult != 0, blobs under a loss, propagate_down, force_backward).

Caffe inserts Split layers where a blob feeds several layers; here the backward pass sums the
gradients of the consumers of each version of a blob instead.

>>> from dlbhc_caffe.backends import torch as engine          # doctest: +SKIP
>>> net = engine.Net("deploy.prototxt", engine.TEST, weights="model.caffemodel")  # doctest: +SKIP
>>> net.blobs["data"].data[...] = batch                        # doctest: +SKIP
>>> codes = net.forward()["fc8_kevin_encode"] > 0.5            # doctest: +SKIP
"""
import contextlib
from collections import OrderedDict
from pathlib import Path

import torch

from ...proto import ProtoError, filter_net, pb, phase_value, read_net, upgrade_net
from . import runtime
from .runtime import NetContext
from .blob import Blob
from .layers import layer_class
from .layers.base import LayerError
from .net_surface import SurfaceMixin
from .net_weights import NetError, WeightsMixin

TRAIN, TEST = pb.TRAIN, pb.TEST


# ---------------------------------------------------------------- the net

def _parse_args(args, kwargs):
    """pycaffe's two forms: Net(file, phase, level=0, stages=None, weights=None) and
    Net(file, weights, phase)."""
    if not args:
        raise TypeError("Net needs a network definition (a prototxt path or a NetParameter)")
    network, rest = args[0], list(args[1:])
    weights, phase = kwargs.pop("weights", None), kwargs.pop("phase", None)
    level, stages = kwargs.pop("level", 0), kwargs.pop("stages", None)
    if kwargs:
        raise TypeError(f"Net got unexpected keyword arguments {sorted(kwargs)}")
    if rest and isinstance(rest[0], (str, Path)):
        if weights is not None:
            raise TypeError("Net: weights given twice")
        weights = rest.pop(0)
    if rest:
        if phase is not None:
            raise TypeError("Net: phase given twice")
        phase = rest.pop(0)
    if rest:
        raise TypeError(f"Net got {len(args)} positional arguments; use Net(prototxt, phase, "
                        "weights=...) or Net(prototxt, weights, phase)")
    return network, phase, weights, int(level), list(stages or [])


class Net(SurfaceMixin, WeightsMixin):
    """A Caffe net run by PyTorch, with pycaffe's surface (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        network, phase, weights, level, stages = _parse_args(args, kwargs)
        if isinstance(network, pb.NetParameter):
            source = f"net '{network.name}'"
            try:
                param = upgrade_net(network, source=source)
            except ProtoError as err:
                raise NetError(str(err)) from None
            if phase is None and not param.HasField("state"):
                raise TypeError("Net: give the phase (TRAIN or TEST)")
        else:
            if phase is None:
                raise TypeError("Net: give the phase (TRAIN or TEST), as pycaffe requires")
            source = str(network)
            try:
                param = read_net(network)
            except ProtoError as err:
                raise NetError(str(err)) from None
        if phase is not None:
            param.state.phase = phase_value(phase)
            param.state.level = level
            param.state.stage.extend(stages)
        self._source = source
        self._build(param)
        if weights is not None:
            self.copy_from(weights)

    # ---- building
    def _fail(self, message):
        raise NetError(f"{self._source}: {message}")

    def _reraise(self, err):
        raise NetError(f"{self._source}: {err}") from None

    def _build(self, param):
        state = param.state
        self.phase = state.phase
        self.name = param.name
        try:
            self._param = filter_net(param, state)
        except ProtoError as err:
            self._reraise(err)
        self._context = NetContext(runtime.device(), runtime.next_seed())
        self.blobs = OrderedDict()
        self.layers, self._layer_names = [], []
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self._bottom_ids, self._top_ids = [], []  # [(name, version)] per layer
        self._loss_weights = []
        self.blob_loss_weights = OrderedDict()
        self.inputs = []
        version = {}
        consumed_last = set()
        for lp in self._param.layer:
            lp.phase = state.phase
            if lp.name in self._layer_names:
                self._fail(f"two layers are named '{lp.name}'")
            try:
                cls = layer_class(lp.type, lp.name)
            except LayerError as err:
                self._reraise(err)
            layer = cls(lp, state.phase, self._context)
            try:
                layer.check_counts(len(lp.bottom), len(lp.top))
            except LayerError as err:
                self._reraise(err)
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                self._fail(f"layer '{lp.name}': propagate_down must be given 0 or "
                           f"{len(lp.bottom)} times (once per bottom)")
            bottoms = []
            for j, name in enumerate(lp.bottom):
                if name not in self.blobs:
                    self._fail(f"unknown bottom blob '{name}' (layer '{lp.name}', bottom index "
                               f"{j})")
                bottoms.append((name, version[name]))
                consumed_last.add((name, version[name]))
            tops = []
            for j, name in enumerate(lp.top):
                in_place = j < len(lp.bottom) and lp.bottom[j] == name
                if name in self.blobs and not in_place:
                    self._fail(f"top blob '{name}' produced by multiple sources (layer "
                               f"'{lp.name}')")
                version[name] = version.get(name, -1) + 1
                tops.append((name, version[name]))
            bottom_shapes = [self.blobs[name].shape for name, _ in bottoms]
            try:
                layer.setup(bottom_shapes)
                top_shapes = layer.reshape(bottom_shapes)
                weights = layer.loss_weights(len(lp.top))
            except LayerError as err:
                self._reraise(err)
            if layer.is_loss and not len(lp.loss_weight):
                lp.loss_weight.extend(weights[:1])  # as Caffe's LossLayer records it
            for j, ((name, _), shape) in enumerate(zip(tops, top_shapes)):
                if name not in self.blobs:
                    init = layer.init_top(j, shape, self._context.device)
                    self.blobs[name] = Blob(init) if init is not None else \
                        Blob.zeros(shape, self._context.device)
                elif tuple(self.blobs[name].shape) != tuple(shape):
                    self._fail(f"layer '{lp.name}' computes '{name}' in place but changes its "
                               f"shape from {self.blobs[name].shape} to {tuple(shape)}")
                self.blob_loss_weights[name] = weights[j]
                if weights[j]:
                    self.blobs[name].fill_diff(weights[j])
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = list(lp.top)
            self._bottom_ids.append(bottoms)
            self._top_ids.append(tops)
            self._loss_weights.append(weights)
        for name in self.blobs:
            self.blob_loss_weights.setdefault(name, 0.0)
        consumed_names = {name for name, v in consumed_last if v == version[name]}
        self.outputs = sorted(name for name in self.blobs if name not in consumed_names)
        self._setup_params()
        self._setup_backward()
        self._records = [None] * len(self.layers)
        # A solver's test nets only run forward: they record no autograd graph.
        self.forward_only = False

    def _setup_params(self):
        """Learnable params in Caffe's order, with their lr/decay multipliers; named params are
        shared (one blob, data and diff) as Caffe's ShareWeights does."""
        self._learnable, self._lr_mult, self._decay_mult = [], [], []
        self._has_spec = {"lr_mult": [], "decay_mult": []}
        self._param_need_backward = []
        owners = {}
        for layer in self.layers:
            specs = layer.param.param
            if len(specs) > len(layer.blobs):
                self._fail(f"too many params specified for layer '{layer.name}' "
                           f"({len(specs)} param specs, {len(layer.blobs)} blobs)")
            needs = []
            for i, blob in enumerate(layer.blobs):
                spec = specs[i] if i < len(specs) else pb.ParamSpec()
                needs.append(spec.lr_mult != 0)
                if spec.name and spec.name in owners:
                    owner_id = owners[spec.name]
                    owner = self._learnable[owner_id]
                    if spec.share_mode == pb.ParamSpec.PERMISSIVE:
                        if owner.count != blob.count:
                            self._fail(f"cannot share param '{spec.name}': layer "
                                       f"'{layer.name}' has {blob.count} values, the owner "
                                       f"{owner.count}")
                        if owner.shape != blob.shape:
                            self._fail(f"param '{spec.name}': PERMISSIVE sharing of blobs of "
                                       f"different shapes is not supported")
                    elif owner.shape != blob.shape:
                        self._fail(f"cannot share param '{spec.name}' owned by another layer "
                                   f"with layer '{layer.name}': shapes {owner.shape} and "
                                   f"{blob.shape} differ")
                    for field, values in (("lr_mult", self._lr_mult),
                                          ("decay_mult", self._decay_mult)):
                        if spec.HasField(field):
                            if self._has_spec[field][owner_id] and \
                                    values[owner_id] != getattr(spec, field):
                                self._fail(f"shared param '{spec.name}' has mismatched {field}")
                            values[owner_id] = getattr(spec, field)
                            self._has_spec[field][owner_id] = True
                    layer.blobs[i] = owner
                    continue
                if spec.name:
                    owners[spec.name] = len(self._learnable)
                self._learnable.append(blob)
                self._lr_mult.append(float(spec.lr_mult))
                self._decay_mult.append(float(spec.decay_mult))
                self._has_spec["lr_mult"].append(spec.HasField("lr_mult"))
                self._has_spec["decay_mult"].append(spec.HasField("decay_mult"))
            self._param_need_backward.append(needs)
        self.params = OrderedDict((name, layer.blobs) for name, layer
                                  in zip(self._layer_names, self.layers) if layer.blobs)

    def _setup_backward(self):
        """Caffe's need-backward analysis (Net::Init)."""
        n = len(self.layers)
        blob_needs = {}
        self._layer_need_backward = []
        self._bottom_need_backward = []
        for i, layer in enumerate(self.layers):
            lp = layer.param
            needs = False
            bottom_needs = []
            for j, (name, v) in enumerate(self._bottom_ids[i]):
                propagate = lp.propagate_down[j] if len(lp.propagate_down) else True
                needs |= blob_needs.get((name, v), False)
                bottom_needs.append(blob_needs.get((name, v), False) and propagate)
            needs |= any(self._param_need_backward[i])
            for top in self._top_ids[i]:
                blob_needs[top] = needs
            self._layer_need_backward.append(needs)
            self._bottom_need_backward.append(bottom_needs)
        # Caffe decides per blob name, after Split layers gave each consumer its own blob; here
        # a blob version is skipped only when every consumer of it needs no gradient from it.
        under_loss, consumed, wanted = set(), set(), set()
        for i in range(n - 1, -1, -1):
            contributes, skips = False, True
            for top, weight in zip(self._top_ids[i], self._loss_weights[i]):
                if weight or top in under_loss:
                    contributes = True
                if top not in consumed or top in wanted:
                    skips = False
            if self._layer_need_backward[i] and skips:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(self._bottom_ids[i])
            if not contributes:
                self._layer_need_backward[i] = False
            for j, blob in enumerate(self._bottom_ids[i]):
                consumed.add(blob)
                if contributes:
                    under_loss.add(blob)
                else:
                    self._bottom_need_backward[i][j] = False
                if self._bottom_need_backward[i][j]:
                    wanted.add(blob)
        if self._param.force_backward:
            for i, layer in enumerate(self.layers):
                self._layer_need_backward[i] = True
                self._bottom_need_backward[i] = [
                    need or layer.allow_force_backward(j)
                    for j, need in enumerate(self._bottom_need_backward[i])]
                self._param_need_backward[i] = [True] * len(layer.blobs)

    # ---- running
    def _run_layer(self, i, autocast, record):
        """Layer i's forward on its bottoms' current data: (leaves_b, leaves_p, outs), the
        leaves being fresh autograd leaves when `record` (else the tensors themselves)."""
        layer = self.layers[i]
        bottoms = [self.blobs[name].tensor() for name in layer.param.bottom]
        params = [b.tensor() for b in layer.blobs]
        try:
            if record:
                bottoms = [t.detach().requires_grad_(True) if need else t
                           for t, need in zip(bottoms, self._bottom_need_backward[i])]
                params = [t.detach().requires_grad_(True) if need else t
                          for t, need in zip(params, self._param_need_backward[i])]
                with torch.enable_grad(), autocast():
                    outs = layer.forward(bottoms, params)
                outs = [o.float() if o is not None and o.dtype != torch.float32 else o
                        for o in outs]
            else:
                with torch.no_grad(), autocast():
                    outs = layer.forward(bottoms, params)
        except LayerError as err:
            raise NetError(f"{self._source}: {err}") from None
        return bottoms, params, outs

    def _forward_layer(self, i, autocast):
        record = self._layer_need_backward[i] and torch.is_grad_enabled() and \
            not self.forward_only
        leaves_b, leaves_p, outs = self._run_layer(i, autocast, record)
        record = (leaves_b, leaves_p, outs) if record else None
        self._records[i] = record
        loss = None
        for (name, _), out, weight in zip(self._top_ids[i], outs, self._loss_weights[i]):
            blob = self.blobs[name]
            if out is not None:
                blob.set_tensor(out)
            if weight:
                value = blob.tensor()
                if not blob.has_diff():
                    blob.fill_diff(weight)
                term = (value.detach() * weight).sum()
                loss = term if loss is None else loss + term
        return loss

    def _autocast(self):
        if runtime.precision() == "bf16" and self.device.type == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext

    def _forward(self, start, end):
        """Run layers start..end (inclusive); the loss (a float), as Caffe's ForwardFromTo."""
        loss = self._forward_tensor(start, end)
        return float(loss) if loss is not None else 0.0

    def _forward_tensor(self, start, end):
        if not 0 <= start <= end < len(self.layers):
            raise IndexError(f"forward from layer {start} to {end}: the net has "
                             f"{len(self.layers)} layers")
        autocast = self._autocast()
        loss = None
        for i in range(start, end + 1):
            term = self._forward_layer(i, autocast)
            if term is not None:
                loss = term if loss is None else loss + term
        return loss

    def _backward(self, start, end):
        """Backward through layers start down to end (inclusive), as Caffe's BackwardFromTo."""
        if not 0 <= end <= start < len(self.layers):
            raise IndexError(f"backward from layer {start} to {end}: the net has "
                             f"{len(self.layers)} layers")
        grads = {}
        for i in range(start, end - 1, -1):
            if not self._layer_need_backward[i]:
                continue
            record = self._records[i]
            layer = self.layers[i]
            if not layer.has_backward and any(self._bottom_need_backward[i]):
                raise NetError(f"{self._source}: layer '{layer.name}' ({layer.type}) has no "
                               "backward (in Caffe either); keep it off the path to the loss")
            if record is None:
                # No forward reached this layer (Caffe's backward runs anyway, on the blobs'
                # current data): record one now, leaving the tops as they are.
                record = self._run_layer(i, self._autocast(), True)
            leaves_b, leaves_p, outs = record
            outputs, seeds = [], []
            for key, out in zip(self._top_ids[i], outs):
                if out is None or not out.requires_grad:
                    continue
                seed = grads.get(key)
                if seed is None:
                    seed = self.blobs[key[0]].diff_tensor()
                if tuple(seed.shape) != tuple(out.shape):
                    seed = seed.reshape(out.shape)
                outputs.append(out)
                seeds.append(seed)
            targets, inputs = [], []
            for j, leaf in enumerate(leaves_b):
                if self._bottom_need_backward[i][j] and leaf.requires_grad:
                    targets.append((True, j))
                    inputs.append(leaf)
            for k, leaf in enumerate(leaves_p):
                if self._param_need_backward[i][k] and leaf.requires_grad:
                    targets.append((False, k))
                    inputs.append(leaf)
            if not outputs or not inputs:
                continue
            got = torch.autograd.grad(outputs, inputs, seeds, retain_graph=True,
                                      allow_unused=True)
            for (is_bottom, j), grad, leaf in zip(targets, got, inputs):
                if grad is None:
                    grad = torch.zeros_like(leaf)
                if is_bottom:
                    key = self._bottom_ids[i][j]
                    total = grads[key] + grad if key in grads else grad
                    grads[key] = total
                    self.blobs[key[0]].set_diff(total)
                else:
                    layer.blobs[j].diff_tensor().add_(grad)

    def reshape(self):
        """Propagate input shapes through the net (after `blob.reshape`), as Caffe's Reshape."""
        for i, layer in enumerate(self.layers):
            if not len(layer.param.bottom):
                continue  # data layers keep their shapes (Input: the user's), as in Caffe
            shapes = [self.blobs[name].shape for name in layer.param.bottom]
            try:
                tops = layer.reshape(shapes)
            except LayerError as err:
                raise NetError(f"{self._source}: {err}") from None
            for j, ((name, _), shape) in enumerate(zip(self._top_ids[i], tops)):
                blob = self.blobs[name]
                if tuple(blob.shape) != tuple(shape):
                    blob.reshape(*shape)
                weight = self._loss_weights[i][j]
                if weight:
                    blob.fill_diff(weight)

    def clear_param_diffs(self):
        """Zero the diffs of all learnable params (Caffe's ClearParamDiffs)."""
        for blob in self._learnable:
            blob.diff_tensor().zero_()

    def close(self):
        """Stop the data layers' loader threads."""
        for layer in self.layers:
            if hasattr(layer, "close"):
                layer.close()

    def __repr__(self):
        return (f"Net('{self.name}', phase={'TRAIN' if self.phase == TRAIN else 'TEST'}, "
                f"{len(self.layers)} layers, device={self.device})")


__all__ = ["Net", "NetError", "NetContext", "TRAIN", "TEST"]
