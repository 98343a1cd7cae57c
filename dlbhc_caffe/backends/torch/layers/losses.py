"""The rest of Caffe's losses, each divided by the batch size (the first axis), as Caffe's are:

SigmoidCrossEntropyLoss: -sum(t log p + (1 - t) log(1 - p)), p = sigmoid(x), computed in
Caffe's overflow-free form. ContrastiveLoss (pairs a, b with a similar flag y):
sum(y d^2 + (1 - y) max(margin - d, 0)^2) / 2 (legacy_version: max(margin - d^2, 0)), with Caffe's
gradient, whose dissimilar term divides by d + 1e-4 rather than d. HingeLoss: one-vs-all
max(0, 1 - t x) with t = +1 at the label and -1 elsewhere, summed (L1) or squared (L2).
MultinomialLogisticLoss: -log(max(p[label], 1e-20)) on probabilities. InfogainLoss: -sum_j
H[label, j] log(max(p_j, 1e-20)) on probabilities, H from infogain_loss_param.source (a
binaryproto) or the third bottom.
"""
import torch

from ....proto import ProtoError, pb, read_blob
from .base import Layer, count
from . import register

LOG_THRESHOLD = 1e-20


class _Loss(Layer):
    bottoms = (2, 2)
    tops = (1, 1)
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom_shapes):
        if bottom_shapes[0][0] != bottom_shapes[1][0]:
            self.fail(f"the bottoms have {bottom_shapes[0][0]} and {bottom_shapes[1][0]} items")
        return [()]

    def _labels(self, labels, classes):
        index = labels.reshape(-1).to(torch.int64)
        if bool(((index < 0) | (index >= classes)).any()):
            self.fail(f"labels must lie in [0, {classes})")
        return index


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_Loss):
    def reshape(self, bottom_shapes):
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            self.fail("the inputs and the targets must have the same count")
        return [()]

    def forward(self, bottoms, params):
        x, target = bottoms[0], bottoms[1].reshape(bottoms[0].shape)
        positive = (x >= 0).to(x.dtype)
        terms = x * (target - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        return [-terms.sum() / x.shape[0]]


class _ContrastiveGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, similar, margin, legacy):
        diff = (a - b).reshape(a.shape[0], -1)
        dist_sq = (diff * diff).sum(dim=1)
        if legacy:
            apart = torch.clamp(margin - dist_sq, min=0.0)
        else:
            apart = torch.clamp(margin - dist_sq.sqrt(), min=0.0) ** 2
        loss = torch.where(similar, dist_sq, apart).sum() / a.shape[0] / 2.0
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shape = margin, legacy, a.shape
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad / ctx.shape[0]
        if ctx.legacy:
            active = (ctx.margin - dist_sq) > 0
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = dist_sq.sqrt()
            active = (ctx.margin - dist) > 0
            beta = -alpha * (ctx.margin - dist) / (dist + 1e-4)
        scale = torch.where(similar, alpha * torch.ones_like(dist_sq),
                            torch.where(active, beta, torch.zeros_like(beta)))
        da = (scale.unsqueeze(1) * diff).reshape(ctx.shape)
        return da, -da, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(_Loss):
    bottoms = (3, 3)

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottom_shapes):
        a, b, y = (tuple(s) for s in bottom_shapes)
        if a != b or any(d != 1 for d in a[2:]):
            self.fail(f"the pair bottoms must both be N x C (x 1 x 1), got {a} and {b}")
        if count(y) != a[0]:
            self.fail(f"the similarity bottom has {count(y)} values for {a[0]} pairs")
        return [()]

    def forward(self, bottoms, params):
        cp = self.param.contrastive_loss_param
        a, b, y = bottoms
        similar = y.detach().reshape(-1).to(torch.int64) != 0
        return [_ContrastiveGrad.apply(a, b, similar, float(cp.margin), cp.legacy_version)]


@register("HingeLoss")
class HingeLoss(_Loss):
    def forward(self, bottoms, params):
        x = bottoms[0]
        scores = x.reshape(x.shape[0], -1)
        index = self._labels(bottoms[1], scores.shape[1])
        sign = torch.ones_like(scores).scatter_(1, index.unsqueeze(1), -1.0)
        margin = torch.clamp(1 + sign * scores, min=0.0)
        if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2:
            return [(margin * margin).sum() / x.shape[0]]
        return [margin.sum() / x.shape[0]]


def _log_prob(prob):
    """log(max(p, 1e-20)), whose gradient Caffe takes as 1 / max(p, 1e-20) everywhere."""
    floor = torch.clamp(prob.detach(), min=LOG_THRESHOLD)
    return torch.log(floor) + (prob - prob.detach()) / floor


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_Loss):
    def forward(self, bottoms, params):
        prob = bottoms[0].reshape(bottoms[0].shape[0], -1)
        index = self._labels(bottoms[1], prob.shape[1])
        picked = prob.gather(1, index.unsqueeze(1))
        return [-_log_prob(picked).sum() / prob.shape[0]]


@register("InfogainLoss")
class InfogainLoss(_Loss):
    bottoms = (2, 3)

    def setup(self, bottom_shapes):
        self.matrix = None
        if len(bottom_shapes) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                self.fail("infogain_loss_param.source must name the H matrix (a binaryproto) "
                          "when there is no third bottom")
            try:
                self.matrix = torch.from_numpy(read_blob(source).astype("float32"))
            except (ProtoError, OSError) as err:
                self.fail(f"cannot read the infogain matrix: {err}")

    def reshape(self, bottom_shapes):
        super().reshape(bottom_shapes)
        dim = count(bottom_shapes[0], 1)
        size = count(bottom_shapes[2]) if len(bottom_shapes) > 2 else self.matrix.numel()
        if size != dim * dim:
            self.fail(f"the infogain matrix has {size} values; {dim} x {dim} are needed")
        return [()]

    def forward(self, bottoms, params):
        prob = bottoms[0].reshape(bottoms[0].shape[0], -1)
        dim = prob.shape[1]
        matrix = bottoms[2] if len(bottoms) > 2 else self.matrix.to(prob.device)
        weights = matrix.detach().reshape(dim, dim)[self._labels(bottoms[1], dim)]
        return [-(weights * _log_prob(prob)).sum() / prob.shape[0]]
