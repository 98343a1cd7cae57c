"""SoftmaxWithLoss, EuclideanLoss and Accuracy, with Caffe's normalization and tie rules.

SoftmaxWithLoss: loss = -sum(log(max(p[label], FLT_MIN))) / normalizer over the positions whose
label is not `ignore_label`; the normalizer is VALID (their count, the default), FULL (all
positions), BATCH_SIZE (outer count) or NONE (1), at least 1; the deprecated `normalize: false`
means BATCH_SIZE. Its gradient is Caffe's (p - onehot) * loss_weight / normalizer, and the
optional probability top carries no gradient.

Accuracy: a position counts when its label ranks within top_k, ranking scores in descending
order and, among equal scores, the higher class index first (Caffe's partial_sort of
(score, index) pairs). With no counted position the accuracy is 0/0, as in Caffe.
"""
import numpy as np
import torch

from ....proto import pb
from .base import Layer, canonical_axis, count
from . import register

FLT_MIN = float(np.finfo(np.float32).tiny)


def _normalization(loss_param):
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return (pb.LossParameter.VALID if loss_param.normalize
                else pb.LossParameter.BATCH_SIZE)
    return pb.LossParameter.VALID


def _labels(layer, labels, outer, inner, classes, ignore):
    """Integer labels (outer, inner), the mask of counted positions, after Caffe's checks."""
    as_int = labels.reshape(outer, inner).to(torch.int64)  # static_cast<int>: truncation
    valid = (as_int != ignore) if ignore is not None else torch.ones_like(as_int, dtype=bool)
    bad = valid & ((as_int < 0) | (as_int >= classes))
    if bool(bad.any()):
        value = int(as_int[bad][0])
        layer.fail(f"label {value} is out of range for {classes} classes")
    return torch.where(valid, as_int, torch.zeros_like(as_int)), valid


class _SoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, prob, label_idx, valid, normalizer):
        outer, classes, inner = prob.shape
        picked = prob.gather(1, label_idx.unsqueeze(1)).squeeze(1)
        terms = -torch.log(torch.clamp(picked, min=FLT_MIN))
        loss = torch.where(valid, terms, torch.zeros_like(terms)).sum() / normalizer
        ctx.save_for_backward(prob, label_idx, valid, normalizer)
        ctx.logits_shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        prob, label_idx, valid, normalizer = ctx.saved_tensors
        diff = prob.clone()
        diff.scatter_add_(1, label_idx.unsqueeze(1),
                          -torch.ones_like(label_idx, dtype=diff.dtype).unsqueeze(1))
        diff = diff * valid.unsqueeze(1).to(diff.dtype)
        diff = diff * (grad_loss / normalizer)
        return diff.reshape(ctx.logits_shape), None, None, None, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    bottoms = (2, 2)
    tops = (1, 2)
    is_loss = True

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.normalization = _normalization(lp)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self.param.softmax_param.axis, len(shape), self.where)
        self.outer, self.inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        if self.outer * self.inner != count(bottom_shapes[1]):
            self.fail(f"number of labels ({count(bottom_shapes[1])}) must match the number of "
                      f"predictions ({self.outer * self.inner}); with a {len(shape)}-D "
                      f"prediction of shape {shape} and softmax axis {self.axis}, the label "
                      f"count must be {self.outer} x {self.inner}")
        tops = [()]
        if len(self.param.top) > 1:
            tops.append(shape)
        return tops

    def _normalizer(self, valid, device):
        mode = self.normalization
        if mode == pb.LossParameter.FULL:
            value = torch.tensor(float(self.outer * self.inner), device=device)
        elif mode == pb.LossParameter.VALID:
            value = valid.sum().to(torch.float32)
        elif mode == pb.LossParameter.BATCH_SIZE:
            value = torch.tensor(float(self.outer), device=device)
        else:
            value = torch.tensor(1.0, device=device)
        return torch.clamp(value, min=1.0)

    def forward(self, bottoms, params):
        logits, labels = bottoms
        classes = logits.shape[self.axis]
        label_idx, valid = _labels(self, labels, self.outer, self.inner, classes, self.ignore)
        prob = torch.softmax(logits.detach(), dim=self.axis)
        prob3 = prob.reshape(self.outer, classes, self.inner)
        loss = _SoftmaxLoss.apply(logits, prob3, label_idx, valid,
                                  self._normalizer(valid, logits.device))
        tops = [loss]
        if len(self.param.top) > 1:
            tops.append(prob)
        return tops


@register("EuclideanLoss")
class EuclideanLoss(Layer):
    """loss = sum((a - b)^2) / num / 2, num = the first axis."""

    bottoms = (2, 2)
    tops = (1, 1)
    is_loss = True

    def reshape(self, bottom_shapes):
        a, b = (tuple(s) for s in bottom_shapes)
        if count(a, 1) != count(b, 1):
            self.fail(f"inputs must have the same dimension: {a} and {b}")
        return [()]

    def forward(self, bottoms, params):
        a, b = bottoms
        diff = a - b.reshape(a.shape)
        num = a.shape[0] if a.dim() else 1
        return [(diff * diff).sum() / num / 2.0]


@register("Accuracy")
class Accuracy(Layer):
    bottoms = (2, 2)
    tops = (1, 2)

    def setup(self, bottom_shapes):
        ap = self.param.accuracy_param
        self.top_k = int(ap.top_k)
        self.ignore = int(ap.ignore_label) if ap.HasField("ignore_label") else None

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self.param.accuracy_param.axis, len(shape), self.where)
        self.outer, self.inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        if self.top_k > count(shape) // max(count(bottom_shapes[1]), 1):
            self.fail(f"top_k ({self.top_k}) must be less than or equal to the number of classes")
        if self.outer * self.inner != count(bottom_shapes[1]):
            self.fail(f"number of labels ({count(bottom_shapes[1])}) must match the number of "
                      f"predictions ({self.outer * self.inner})")
        tops = [()]
        if len(self.param.top) > 1:
            tops.append((shape[self.axis],))
        return tops

    def forward(self, bottoms, params):
        scores, labels = bottoms
        classes = scores.shape[self.axis]
        label_idx, valid = _labels(self, labels, self.outer, self.inner, classes, self.ignore)
        s3 = scores.reshape(self.outer, classes, self.inner)
        own = s3.gather(1, label_idx.unsqueeze(1))
        index = torch.arange(classes, device=scores.device).reshape(1, classes, 1)
        ahead = (s3 > own) | ((s3 == own) & (index > label_idx.unsqueeze(1)))
        hit = (ahead.sum(dim=1) < self.top_k) & valid
        counted = valid.sum().to(torch.float32)
        tops = [hit.sum().to(torch.float32) / counted]
        if len(self.param.top) > 1:
            per_class = torch.zeros(classes, device=scores.device)
            seen = torch.zeros(classes, device=scores.device)
            per_class.index_add_(0, label_idx[valid], hit[valid].to(torch.float32))
            seen.index_add_(0, label_idx[valid], torch.ones_like(label_idx[valid],
                                                                 dtype=torch.float32))
            tops.append(torch.where(seen > 0, per_class / torch.clamp(seen, min=1.0),
                                    torch.zeros_like(seen)))
        return tops
