"""The shape every layer has, as in Caffe: set up from its LayerParameter, reshape its tops from
its bottoms, forward.

Backward is torch's autograd applied to each layer's forward on its own: the net records every
layer's forward with fresh leaves for its bottoms and params, and its backward asks autograd for
the gradients of those leaves given the tops' diffs. A layer whose gradient must follow Caffe
rather than calculus (softmax loss, eltwise max, dropout masks) writes a torch.autograd.Function.
"""
import math

import torch

from ..blob import Blob
from ..fillers import default_filler, fill
from ....errors import DlbhcError


class LayerError(DlbhcError):
    """A layer whose parameters or inputs Caffe would reject; the message names the layer."""


def canonical_axis(axis, num_axes, where):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
    axis = int(axis)
    if not -num_axes <= axis < max(num_axes, 1):
        raise LayerError(f"{where}: axis {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def count(shape, start=0, end=None):
    return math.prod(shape[start:end])


class Layer:
    """Base class. Subclasses set `type`, the bottom/top counts, and override `setup`,
    `reshape` and `forward`."""

    type = ""
    bottoms = (0, None)  # (min, max); max None = unbounded
    tops = (0, None)
    is_loss = False      # Caffe's LossLayer: loss_weight 1 on top 0 unless given
    has_backward = True  # False: Caffe's Backward is NOT_IMPLEMENTED (ArgMax, Threshold)

    def __init__(self, param, phase, context):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.context = context
        self.blobs = []

    # ---- errors
    @property
    def where(self):
        return f"layer '{self.name}' ({self.type})"

    def fail(self, message):
        raise LayerError(f"{self.where}: {message}")

    def check_counts(self, num_bottoms, num_tops):
        for what, n, (low, high) in (("bottom", num_bottoms, self.bottoms),
                                     ("top", num_tops, self.tops)):
            if n < low or (high is not None and n > high):
                want = str(low) if low == high else (f"at least {low}" if high is None
                                                     else f"{low} to {high}")
                self.fail(f"takes {want} {what} blob(s), got {n}")

    # ---- the Caffe layer interface
    def setup(self, bottom_shapes):
        """One-time setup from the first bottom shapes: read parameters, create param blobs."""

    def reshape(self, bottom_shapes):
        """The top shapes for these bottom shapes."""
        raise NotImplementedError

    def forward(self, bottoms, params):
        """Tops (tensors) from bottoms and params (tensors); an entry None keeps that top."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index):
        return True

    def init_top(self, index, shape, device):
        """The initial tensor of top `index` (None: zeros)."""
        return None

    def loss_weights(self, num_tops):
        weights = list(self.param.loss_weight)
        if not weights and self.is_loss:
            weights = [1.0]
        if weights and len(weights) != num_tops:
            # Caffe's LossLayer adds one loss_weight, then SetLossWeights insists on one per top.
            hint = "; a loss layer with several tops needs them all" if self.is_loss else ""
            self.fail(f"loss_weight must be unspecified or given once per top blob "
                      f"({num_tops} tops, {len(weights)} loss_weight(s){hint})")
        return weights or [0.0] * num_tops

    # ---- helpers for subclasses
    def new_param(self, shape, filler=None, default_value=0.0):
        """A param blob of `shape` filled by `filler` (a FillerParameter; None = constant)."""
        filler = filler if filler is not None else default_filler(default_value)
        values = fill(shape, filler, self.context.filler_generator, where=self.where)
        return Blob(values.to(self.context.device))

    def param_shapes_from_proto(self, expected):
        """Load blobs given inside the LayerParameter itself (a net built from a caffemodel)."""
        if not len(self.param.blobs):
            return False
        from ..blob import decode_blob, shapes_match  # noqa: PLC0415

        if len(self.param.blobs) != len(expected):
            self.fail(f"holds {len(self.param.blobs)} param blobs, expected {len(expected)}")
        self.blobs = []
        for i, (shape, proto) in enumerate(zip(expected, self.param.blobs)):
            if not shapes_match(shape, proto):
                self.fail(f"param {i} in the net definition has the wrong shape for {shape}")
            values = torch.from_numpy(decode_blob(proto).reshape(shape))  # a fresh array
            self.blobs.append(Blob(values.to(self.context.device)))
        return True

    def make_params(self, specs):
        """Create param blobs from [(shape, filler, default value)], unless the LayerParameter
        carries them."""
        if self.param_shapes_from_proto([s for s, _, _ in specs]):
            return
        self.blobs = [self.new_param(shape, filler, default) for shape, filler, default in specs]


def filler_or_none(message, field):
    return getattr(message, field) if message.HasField(field) else None

