"""Layers that produce blobs: Input, DummyData, Data (LevelDB/LMDB of Datum) and ImageData
(a list of image files). The loading itself lives in ..data."""
import numpy as np
import torch

from ....datasets.dbread import check_datum
from ....proto import pb
from .. import runtime
from ..data import BatchLoader, RecordCursor, Transformer, datum_pixels, parse_datum
from ..images import read_image, read_image_list
from ..fillers import fill
from .base import Layer
from . import register


@register("Input")
class Input(Layer):
    """Tops shaped by input_param and written by the user (`net.blobs[name].data[...] = x`)."""

    bottoms = (0, 0)
    tops = (1, None)

    def setup(self, bottom_shapes):
        shapes = self.param.input_param.shape
        n = len(self.param.top)
        if len(shapes) not in (0, 1, n):
            self.fail(f"give 0, 1 or {n} input_param shapes (one per top), got {len(shapes)}")
        self.shapes = [tuple(int(d) for d in shapes[0 if len(shapes) == 1 else i].dim)
                       if len(shapes) else () for i in range(n)]
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                self.fail(f"input shape {shape} has a negative dimension")

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, bottoms, params):
        return [None] * len(self.shapes)


@register("DummyData")
class DummyData(Layer):
    """Tops filled by data_filler: a constant filler fills once, the others at every forward."""

    bottoms = (0, 0)
    tops = (1, None)

    def setup(self, bottom_shapes):
        dp = self.param.dummy_data_param
        n = len(self.param.top)
        fillers = list(dp.data_filler)
        if len(fillers) not in (0, 1, n):
            self.fail(f"give 0, 1 or {n} data_filler(s), got {len(fillers)}")
        legacy = [list(getattr(dp, f)) for f in ("num", "channels", "height", "width")]
        if len(dp.shape) and any(legacy):
            self.fail("both shape and the legacy num/channels/height/width are given")
        if len(dp.shape):
            if len(dp.shape) not in (1, n):
                self.fail(f"give 1 or {n} shapes, got {len(dp.shape)}")
            self.shapes = [tuple(int(d) for d in dp.shape[0 if len(dp.shape) == 1 else i].dim)
                           for i in range(n)]
        else:
            for name, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n):
                    self.fail(f"give 1 or {n} values of {name}, got {len(values)}")
            self.shapes = [tuple(values[0 if len(values) == 1 else i] for values in legacy)
                           for i in range(n)]
        if not fillers:
            fillers = [pb.FillerParameter(type="constant", value=0.0)]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n)]
        self.refill = [f.type != "constant" for f in self.fillers]
        self.generator = torch.Generator().manual_seed(self.context.layer_seed(self.name))

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def _fill(self, i, shape, device):
        return fill(shape, self.fillers[i], self.generator, where=self.where).to(device)

    def init_top(self, index, shape, device):
        return self._fill(index, shape, device)

    def forward(self, bottoms, params):
        return [self._fill(i, shape, self.context.device) if self.refill[i] else None
                for i, shape in enumerate(self.shapes)]


class _Loading(Layer):
    """Shared by Data and ImageData: a transformer, a loader, tops (data, label)."""

    bottoms = (0, 0)
    tops = (1, 2)

    def _start(self, batch_size, first_pixels, next_record, decode, prefetch):
        if batch_size <= 0:
            self.fail("batch_size must be positive")
        self.batch_size = int(batch_size)
        self.transformer = Transformer(self.param.transform_param, self.phase, self.where)
        self.record_shape = self.transformer.output_shape(tuple(first_pixels.shape))
        rng = np.random.default_rng(self.context.layer_seed(self.name))
        self.loader = BatchLoader(next_record, decode, self.transformer, self.batch_size, rng,
                                  self.where, depth=prefetch, workers=runtime.default_workers(),
                                  pin_memory=self.context.device.type == "cuda")

    def reshape(self, bottom_shapes):
        tops = [(self.batch_size,) + tuple(self.record_shape)]
        if len(self.param.top) > 1:
            tops.append((self.batch_size,))
        return tops

    def forward(self, bottoms, params):
        data, labels = self.loader.next_batch()
        device = self.context.device
        data = torch.as_tensor(data).to(device, non_blocking=True)
        tops = [data]
        if len(self.param.top) > 1:
            tops.append(torch.from_numpy(labels).to(device, non_blocking=True))
        return tops

    def close(self):
        self.loader.close()


@register("Data")
class Data(_Loading):
    """Datum records of a LevelDB or LMDB (`data_param`), in key order from the first key,
    transformed (Caffe 1.0's DataReader: rand_skip has no effect)."""

    def setup(self, bottom_shapes):
        dp = self.param.data_param
        if not dp.source:
            self.fail("data_param.source is required")
        cursor = RecordCursor(dp.source, dp.backend, self.where)
        where, transform = self.where, self.param.transform_param
        first = parse_datum(cursor.peek(), f"{where}: {cursor.record}")
        # Every record is checked as it is read (byte count, one shape), naming its key.
        first_shape = check_datum(first, f"{where}: {cursor.record}")
        # rand_skip is not applied: Caffe 1.0's Data layer (its DataReader) ignores it too.

        def next_record():
            datum = parse_datum(cursor.next(), f"{where}: {cursor.record}")
            check_datum(datum, f"{where}: {cursor.record}", first_shape)
            return datum, datum.label

        def decode(datum):
            return datum_pixels(datum, transform, where)

        self.cursor = cursor
        self._start(dp.batch_size, decode(first), next_record, decode, dp.prefetch)

    def close(self):
        super().close()
        self.cursor.close()


@register("ImageData")
class ImageData(_Loading):
    """Image files listed in `image_data_param.source` (`path label` lines), read as BGR (or
    gray), resized to new_height x new_width when both are given, transformed."""

    def setup(self, bottom_shapes):
        ip = self.param.image_data_param
        if not ip.source:
            self.fail("image_data_param.source is required")
        if (ip.new_height > 0) != (ip.new_width > 0):
            self.fail("new_height and new_width must be set together")
        lines = read_image_list(ip.source, self.where)
        rng = np.random.default_rng(self.context.layer_seed(self.name + "/shuffle"))
        if ip.shuffle:
            rng.shuffle(lines)
        root, color = ip.root_folder, ip.is_color
        height, width, where = int(ip.new_height), int(ip.new_width), self.where
        state = {"at": 0}
        if ip.rand_skip:
            state["at"] = int(rng.integers(ip.rand_skip)) % len(lines)

        def next_record():
            if state["at"] >= len(lines):
                state["at"] = 0
                if ip.shuffle:
                    rng.shuffle(lines)
            path, label = lines[state["at"]]
            state["at"] += 1
            return root + path, label

        def decode(path):
            return read_image(path, color, height, width, where)

        self._start(ip.batch_size, decode(root + lines[state["at"]][0]), next_record, decode,
                    4)
