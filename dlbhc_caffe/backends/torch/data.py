"""Input pipeline of the Data and ImageData layers: records in Caffe's order, Caffe's
transform_param, and prefetching that keeps the net fed (image files: images.py).

- Order: a Data layer reads its LevelDB/LMDB in key order and starts again at the first key
  after the last (Caffe's DataReader); an ImageData layer reads its list in order, shuffled at
  setup and after each pass when `shuffle` is on.
- Transform (Caffe's DataTransformer): crop `crop_size` at a random offset in TRAIN and at the
  centre in TEST; mirror (random, in either phase) when `mirror`; subtract `mean_file` (a
  C x H x W mean the size of the record, cropped with it) or `mean_value`s; multiply by `scale`.
  out = mirror((pixel - mean) * scale).
- Prefetch: one thread reads records in order (LevelDB admits one process per database, and one
  open handle per process, shared here between the nets of a process), draws the random crops
  and mirrors in that order (so a seed fixes them), and hands decoding and transforming to a pool
  of worker threads (Pillow's decoder and numpy release the GIL); finished batches wait in a
  queue of `prefetch` batches while the net computes.
"""
import functools
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...datasets import dbread
from ...datasets.db import DatabaseError, detect_backend
from ...datasets.records import decode_datum
from ...errors import DlbhcError
from ...proto import ProtoError, pb, read_mean
from ...rules.transform import TransformError, check_param, transformed_shape

# ---------------------------------------------------------------- databases

class DataError(DlbhcError):
    """A data source that cannot be read as the layer asks; names the layer and the source."""


def _detected(path):
    try:
        return detect_backend(path)
    except DatabaseError:
        return None


class RecordCursor:
    """Serialized Datum records of a LevelDB or LMDB in key order, wrapping at the end."""

    def __init__(self, source, backend, where):
        self.source, self.where = str(source), where
        path = Path(source)
        if not path.is_dir():
            raise DataError(f"{where}: data source '{source}' is not a database folder "
                            "(Caffe resolves `source` against the working directory)")
        kind = "lmdb" if backend == pb.DataParameter.LMDB else "leveldb"
        try:
            key, handle = dbread.acquire(path, kind)
        except DatabaseError as err:
            found = _detected(path)
            hint = f"; it is a {found.upper()} (set data_param backend: {found.upper()})" \
                if found not in (None, kind) else ""
            raise DataError(f"{where}: {err}{hint}") from None
        self.key = None  # the key of the record last returned, for messages
        # (functools.partial, not a bound method: the running iteration, which the finalizer
        # holds, must not keep the cursor alive)
        self._iter_factory = functools.partial(dbread.raw_items, handle, kind, path)
        self._live = {"items": None}  # the running iteration, closed before the release
        self._finalizer = weakref.finalize(self, RecordCursor._release, self._live, key)
        # At interpreter exit a daemon loader thread may still be reading: leave the handle
        # to the operating system rather than close it under that thread.
        self._finalizer.atexit = False

    @property
    def record(self):
        """'<source>: record <key>' of the record last returned, for messages."""
        return f"{self.source}: record {self.key}"

    @staticmethod
    def _release(live, key):
        items, live["items"] = live["items"], None
        if items is not None:
            try:
                items.close()
            except ValueError:  # running in a loader thread that did not stop: leave it open
                return
        dbread.release(key)

    def next(self):
        live = self._live
        if live["items"] is None:
            live["items"] = self._iter_factory()
        for _ in range(2):
            try:
                self.key, value = next(live["items"])
                return value
            except StopIteration:
                live["items"] = self._iter_factory()
        raise DataError(f"{self.where}: data source '{self.source}' holds no records")

    def peek(self):
        items = self._iter_factory()
        try:
            for self.key, value in items:
                return value
        finally:
            items.close()
        raise DataError(f"{self.where}: data source '{self.source}' holds no records")

    def close(self):
        """Close the iteration, then release the database (call after the loader stopped)."""
        self._finalizer()


def parse_datum(raw, where):
    datum = pb.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception as err:  # protobuf's DecodeError
        raise DataError(f"{where}: a record is not a Datum ({err})") from None
    return datum


def datum_pixels(datum, transform, where):
    """A Datum's pixels as C x H x W (uint8 or float32), decoding encoded records to BGR/gray."""
    if datum.encoded:
        try:
            pixels = decode_datum(datum)
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        return _force_channels(pixels, transform)
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:
        if len(datum.data) != int(np.prod(shape)):
            raise DataError(f"{where}: a record says {shape} but holds {len(datum.data)} bytes")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    values = np.asarray(datum.float_data, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{where}: a record says {shape} but holds {values.size} floats")
    return values.reshape(shape)


def _force_channels(pixels, transform):
    if transform.force_color and pixels.shape[0] == 1:
        return np.repeat(pixels, 3, axis=0)
    if transform.force_gray and pixels.shape[0] == 3:
        b, g, r = (pixels[i].astype(np.float32) for i in range(3))
        return np.clip(np.rint(0.114 * b + 0.587 * g + 0.299 * r), 0, 255).astype(np.uint8)[None]
    return pixels


# ---------------------------------------------------------------- transform_param

class Transformer:
    """Caffe's DataTransformer for C x H x W records (see the module docstring)."""

    def __init__(self, param, phase, where):
        self.param, self.phase, self.where = param, phase, where
        self.crop = int(param.crop_size)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.force_color, self.force_gray = param.force_color, param.force_gray
        try:
            check_param(param, where)
        except TransformError as err:
            raise DataError(str(err)) from None
        self.mean = None
        if param.HasField("mean_file"):
            try:
                self.mean = read_mean(param.mean_file).astype(np.float32)
            except ProtoError as err:
                raise DataError(f"{where}: mean_file: {err}") from None
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    @property
    def needs_random(self):
        return self.mirror or (self.phase == pb.TRAIN and self.crop > 0)

    def output_shape(self, shape):
        """The transformed shape of a C x H x W record, after Caffe's checks (rules.transform)."""
        try:
            return transformed_shape(shape, self.crop,
                                     None if self.mean is None else self.mean.shape,
                                     len(self.mean_values), self.where,
                                     mean_name=f"mean_file {self.param.mean_file}")
        except TransformError as err:
            raise DataError(str(err)) from None

    def draw(self, shape, rng):
        """(h_off, w_off, mirror) for one record, drawn as Caffe draws them."""
        _, h, w = shape
        mirror = bool(self.mirror and rng.integers(2))
        if not self.crop:
            return 0, 0, mirror
        if self.phase == pb.TRAIN:
            return int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1)), \
                mirror
        return (h - self.crop) // 2, (w - self.crop) // 2, mirror

    def apply(self, pixels, h_off, w_off, mirror, out):
        """Write the transformed record into `out` (float32 C x crop x crop)."""
        _, h, w = out.shape
        window = (slice(None), slice(h_off, h_off + h), slice(w_off, w_off + w))
        values = pixels[window].astype(np.float32)
        if self.mean is not None:
            values -= self.mean[window]
        elif len(self.mean_values):
            values -= self.mean_values.reshape(-1, 1, 1) if len(self.mean_values) > 1 \
                else self.mean_values[0]
        values *= self.scale
        out[...] = values[:, :, ::-1] if mirror else values


# ---------------------------------------------------------------- prefetching

class _Producer:
    """What the loader thread needs, and nothing that refers back to the net (so a net that is
    dropped stops its loader)."""

    def __init__(self, next_record, decode, transformer, batch_size, rng, where, workers,
                 pin_memory):
        self.next_record, self.decode = next_record, decode
        self.transformer, self.batch_size, self.rng = transformer, batch_size, rng
        self.where, self.workers, self.pin_memory = where, workers, pin_memory
        self.pool = None

    def make_batch(self):
        records = [self.next_record() for _ in range(self.batch_size)]
        payloads = [r[0] for r in records]
        if self.pool is not None and self.batch_size > 1:
            pixels = list(self.pool.map(self.decode, payloads))
        else:
            pixels = [self.decode(p) for p in payloads]
        shapes = [self.transformer.output_shape(tuple(p.shape)) for p in pixels]
        for i, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise DataError(f"{self.where}: record {i} of a batch transforms to {shape}, the "
                                f"batch's first to {shapes[0]} (records of one batch must give "
                                "one size: resize them or set crop_size)")
        draws = [self.transformer.draw(tuple(p.shape), self.rng) for p in pixels]
        holder, data = self._allocate((self.batch_size,) + shapes[0])
        labels = np.asarray([r[1] for r in records], dtype=np.float32)

        def work(i):
            self.transformer.apply(pixels[i], *draws[i], data[i])
        if self.pool is not None and self.batch_size > 1:
            list(self.pool.map(work, range(self.batch_size)))
        else:
            for i in range(self.batch_size):
                work(i)
        return holder, labels

    def _allocate(self, shape):
        if self.pin_memory:
            import torch  # noqa: PLC0415

            tensor = torch.empty(shape, dtype=torch.float32).pin_memory()
            return tensor, tensor.numpy()
        array = np.empty(shape, dtype=np.float32)
        return array, array

    def run(self, out, stop):
        try:
            while not stop.is_set():
                batch = self.make_batch()
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to next_batch()
            if not stop.is_set():
                out.put(err)


class BatchLoader:
    """Batches of (data N x C x H x W float32, labels N float32) made ahead of time.

    `next_record()` (called from the one reader thread) returns (payload, label); `decode(payload)`
    (called from worker threads) returns the C x H x W pixels. Data is a torch tensor in pinned
    memory when `pin_memory` (GPU runs), else a numpy array. Errors raised while loading reach
    the caller of `next_batch()`. `depth` batches wait ready; `depth=0` loads in the caller.
    """

    def __init__(self, next_record, decode, transformer, batch_size, rng, where, depth=4,
                 workers=2, pin_memory=False):
        self._producer = _Producer(next_record, decode, transformer, int(batch_size), rng,
                                   where, max(1, int(workers)), pin_memory)
        self.depth = int(depth)
        self._queue = self._thread = None
        self._stop = threading.Event()

    def start(self):
        if self._thread is not None or self.depth <= 0:
            return
        producer = self._producer
        producer.pool = ThreadPoolExecutor(max_workers=producer.workers,
                                           thread_name_prefix="dlbhc-decode")
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=producer.run, args=(self._queue, self._stop),
                                        name=f"dlbhc-loader {producer.where}", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, BatchLoader._shutdown, self._stop, self._queue,
                                           producer.pool)

    @staticmethod
    def _shutdown(stop, out, pool):
        stop.set()
        try:
            while True:
                out.get_nowait()
        except queue.Empty:
            pass
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self):
        """Stop the loader thread (the net's data layers call this when the net is closed)."""
        if self._thread is not None:
            self._finalizer()
            self._thread.join(timeout=5)
            self._thread = None

    def next_batch(self):
        if self.depth <= 0:
            return self._producer.make_batch()
        self.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item


__all__ = ["RecordCursor", "Transformer", "BatchLoader", "DataError", "parse_datum",
           "datum_pixels"]
