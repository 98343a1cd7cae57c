"""The pycaffe-facing run methods of Net: forward / backward with named start and end layers and
keyword inputs, forward_all and forward_backward_all in batches (python/caffe/pycaffe.py's
semantics: inputs are written into the input blobs, top diffs into the output blobs; the result
holds the outputs, or `end`'s tops, plus the blobs asked for)."""
from collections import OrderedDict

import numpy as np


class SurfaceMixin:
    """pycaffe's properties and forward, backward, forward_all, forward_backward_all over
    Net's _forward/_backward."""

    @property
    def layer_dict(self):
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _inputs(self):
        names = list(self.blobs)
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        names = list(self.blobs)
        return [names.index(n) for n in self.outputs]

    @property
    def device(self):
        return self._context.device

    @property
    def learnable_params(self):
        """The params the solver updates (shared params once), in Caffe's order."""
        return list(self._learnable)

    @property
    def params_lr(self):
        return list(self._lr_mult)

    @property
    def params_weight_decay(self):
        return list(self._decay_mult)

    def layer_index(self, name):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise KeyError(f"the net has no layer '{name}' (layers: "
                           f"{', '.join(self._layer_names)})") from None

    # ---- running
    # (arguments, what the net calls them, one of them, hint) in the errors of _write_arrays
    _WRITE_WORDS = {"data": ("input blob arguments", "inputs", "input", " (reshape the blob "
                             "first)"),
                    "diff": ("top diff arguments", "outputs", "diff", "")}

    def _write_arrays(self, values, side, expected):
        """Write {blob: array} into each blob's `side`: forward's inputs ("data") or backward's
        top diffs ("diff"); the names must be exactly `expected`."""
        if not values:
            return
        what, expected_what, item, hint = self._WRITE_WORDS[side]
        if set(values) != set(expected):
            raise ValueError(f"{what} {sorted(values)} do not match the net {expected_what} "
                             f"{expected}")
        for name, value in values.items():
            value = np.asarray(value)
            blob = self.blobs[name]
            if value.shape[0] != blob.shape[0]:
                raise ValueError(f"{item} '{name}' has {value.shape[0]} items, the blob "
                                 f"{blob.shape[0]}{hint}")
            getattr(blob, side)[...] = value

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net (or layers start..end, by name); returns {blob: data} of the outputs
        (or of `end`'s tops and `blobs`). Keyword arguments set the net's inputs first."""
        blobs = list(blobs or [])
        start_i = self.layer_index(start) if start is not None else 0
        if end is not None:
            end_i = self.layer_index(end)
            outputs = set(blobs) | (set(self.top_names[end]) if end not in self.blobs else {end})
        else:
            end_i = len(self.layers) - 1
            outputs = set(self.outputs) | set(blobs)
        self._write_arrays(kwargs, "data", self.inputs)
        self._forward(start_i, end_i)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backpropagate (from layer `start` down to `end`, by name); returns {blob: diff} of
        the inputs (or of `end` and `diffs`). Keyword arguments set the outputs' diffs first."""
        diffs = list(diffs or [])
        start_i = self.layer_index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_i = self.layer_index(end)
            outputs = set(diffs) | (set(self.bottom_names[end]) if end not in self.blobs
                                    else {end})
        else:
            end_i = 0
            outputs = set(self.inputs) | set(diffs)
        self._write_arrays(kwargs, "diff", self.outputs)
        self._backward(start_i, end_i)
        return {name: self.blobs[name].diff for name in outputs}

    def forward_all(self, blobs=None, **kwargs):
        """Forward inputs of any length in batches of the input blobs' size; returns
        {blob: stacked data} of the outputs (and `blobs`) that have a batch axis."""
        if not kwargs:
            return {name: value.copy() for name, value in self.forward(blobs=blobs).items()}
        total = len(next(iter(kwargs.values())))
        batch = self.blobs[self.inputs[0]].shape[0]
        names = [n for n in sorted(set(self.outputs) | set(blobs or []))
                 if self.blobs[n].data.ndim and self.blobs[n].shape[0] == batch]
        results = {name: [] for name in names}
        for chunk in self._batches(kwargs, batch):
            out = self.forward(blobs=blobs, **chunk)
            for name in names:
                results[name].append(out[name].copy())
        return {name: np.concatenate(parts)[:total] for name, parts in results.items()}

    @staticmethod
    def _batches(values, batch):
        """{name: array} in chunks of `batch` items, the last one padded with zeros."""
        if not values:
            return
        total = len(next(iter(values.values())))
        for first in range(0, total, batch):
            chunk = {}
            for name, array in values.items():
                part = np.asarray(array[first:first + batch])
                if len(part) < batch:
                    pad = np.zeros((batch - len(part),) + part.shape[1:], part.dtype)
                    part = np.concatenate([part, pad])
                chunk[name] = part
            yield chunk

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward and backward in batches: inputs and output diffs of any length (outputs
        missing from kwargs keep their diffs); returns ({blob: data}, {blob: diff}), stacked,
        the padding of the last batch dropped."""
        batch = next(iter(self.blobs.values())).shape[0]
        inputs = {k: v for k, v in kwargs.items() if k in self.inputs}
        tops = {k: v for k, v in kwargs.items() if k in self.outputs}
        outs = {name: [] for name in set(self.outputs) | set(blobs or [])}
        grads = {name: [] for name in set(self.inputs) | set(diffs or [])}
        forward_chunks = list(self._batches(inputs, batch))
        backward_chunks = list(self._batches(tops, batch))
        for i in range(max(len(forward_chunks), len(backward_chunks), 1)):
            got = self.forward(blobs=blobs, **(forward_chunks[i] if i < len(forward_chunks)
                                               else {}))
            back = self.backward(diffs=diffs, **(backward_chunks[i] if i < len(
                backward_chunks) else {}))
            for store, result in ((outs, got), (grads, back)):
                for name, value in result.items():
                    store[name].extend(value.copy())
        total = len(next(iter(kwargs.values()))) if kwargs else None
        return ({n: np.asarray(v)[:total] for n, v in outs.items()},
                {n: np.asarray(v)[:total] for n, v in grads.items()})
