"""Encode: images or database records -> latent activations, hash codes and fc7 features.

One forward pass of a deploy net (Input -> ... -> fc7 -> fc8_kevin -> fc8_kevin_encode) gives
both things the search needs: the latent layer's sigmoid output (``latent``; ``codes`` are
``latent > 0.5``) and ``fc7`` as Caffe exposes that blob, after relu7 (relu7 and drop7 run in
place; dropout is the identity in the TEST phase).

Image files go through prepare_batch.m's preprocessing, database records through Caffe's
TEST-phase DataTransformer (see :mod:`dlbhc_caffe.encode.transform`). Batches have any size
(``batch_size``, default 10 as in demo.m); the last one is partial and the input blob is reshaped
for it, so nothing is padded.
"""
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import backends, runs
from ..datasets import read_lines
from ..datasets.db import count_records, open_db
from ..datasets.records import decode_datum
from ..proto import ProtoError, read_net
from ..rules.validate import check_deploy
from ..rules.weights import check_model_weights, plan_weight_copy
from .features import Features, concat_features
from .transform import EncodeError, Transform, mean_array, read_image, size_pair

LATENT_BLOB = "fc8_kevin_encode"
FC7_BLOB = "fc7"
BATCH_SIZE = 10  # demo.m's batch


def deploy_blobs(deploy):
    """(input blob, its shape, latent blob) of a deploy prototxt, any Caffe generation.

    The latent blob is the top of the last Sigmoid layer (fc8_kevin_encode in KevinNet).
    """
    net = read_net(deploy)
    input_blob, shape, latent = None, None, None
    for layer in net.layer:
        if layer.type == "Input" and input_blob is None and len(layer.top):
            input_blob = layer.top[0]
            if len(layer.input_param.shape):
                shape = tuple(int(d) for d in layer.input_param.shape[0].dim)
        if layer.type == "Sigmoid" and len(layer.top):
            latent = layer.top[0]
    if input_blob is None:
        raise EncodeError(f"{deploy}: no Input layer (or input: field); a deploy net needs one")
    if latent is None:
        raise EncodeError(f"{deploy}: no Sigmoid layer, so no latent layer to take codes from "
                          f"(KevinNet's is '{LATENT_BLOB}')")
    tops = {top for layer in net.layer for top in layer.top}
    return input_blob, shape, latent, tops


class Encoder:
    """Runs a deploy net over batches and collects latent activations and fc7.

    net: a pycaffe-shaped net (``blobs[name].data``, ``blobs[name].reshape``, ``reshape()``,
        ``forward(**inputs)``), e.g. ``dlbhc_caffe.backends.get("auto").Net(deploy, TEST,
        weights=...)``; see :meth:`from_files` and :meth:`from_run`.
    transform: a :class:`Transform`; by default built from the input blob's shape, no mean.
    latent_blob, fc7_blob, input_blob: blob names (KevinNet's by default). ``fc7_blob=None``
        skips fc7 (an N x 0 array).
    batch_size: images per forward pass (default 10, as demo.m).
    progress: report progress on stderr (tqdm).

    >>> import numpy as np
    >>> class Blob:
    ...     def __init__(self, *shape): self.data = np.zeros(shape, np.float32)
    ...     def reshape(self, *shape): self.data = np.zeros(shape, np.float32)
    >>> class ToyNet:  # latent = sigmoid(mean pixel), fc7 = the mean pixel
    ...     blobs = {"data": Blob(4, 3, 2, 2), "fc7": Blob(4, 1), "fc8_kevin_encode": Blob(4, 1)}
    ...     def reshape(self):
    ...         n = self.blobs["data"].data.shape[0]
    ...         self.blobs["fc7"].reshape(n, 1); self.blobs["fc8_kevin_encode"].reshape(n, 1)
    ...     def forward(self, data):
    ...         m = data.reshape(len(data), -1).mean(1, keepdims=True)
    ...         self.blobs["fc7"].data[...] = m
    ...         self.blobs["fc8_kevin_encode"].data[...] = 1 / (1 + np.exp(-m))
    >>> records = np.stack([np.full((3, 2, 2), v, np.uint8) for v in (0, 1, 2, 3, 4)])
    >>> features = Encoder(ToyNet(), batch_size=2).encode_records(records, mean_values=2)
    >>> features.codes.ravel().tolist(), features.fc7.ravel().tolist()
    ([0, 0, 0, 1, 1], [-2.0, -1.0, 0.0, 1.0, 2.0])
    """

    def __init__(self, net, transform=None, latent_blob=LATENT_BLOB, fc7_blob=FC7_BLOB,
                 input_blob="data", batch_size=BATCH_SIZE, progress=False):
        self.net = net
        self.transform = transform
        self.latent_blob = latent_blob
        self.fc7_blob = fc7_blob
        self.input_blob = input_blob
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------ construction

    @classmethod
    def from_files(cls, deploy, weights, mean=None, mean_values=None, resize=None, scale=1.0,
                   backend="auto", batch_size=BATCH_SIZE, progress=False, allow_layers=(),
                   allow_missing_weights=False):
        """An encoder for a deploy prototxt (any Caffe generation) and a caffemodel.

        ``mean`` is a .binaryproto path (or a C x H x W array); image files are resized to its
        size, as prepare_batch.m did with the 256 x 256 ImageNet mean. Everything is checked here,
        before the engine sees it (Caffe aborts the process on a failed CHECK), including that
        the caffemodel has weights for every learnable layer (``allow_missing_weights`` lets a
        partial one through; see :mod:`dlbhc_caffe.rules.weights`). Layers that write files or
        run code (HDF5Output, Python) are refused unless ``allow_layers`` names them.
        """
        deploy, weights = Path(deploy), Path(weights)
        for path, what in ((deploy, "deploy prototxt"), (weights, "caffemodel")):
            if not path.is_file():
                raise EncodeError(f"{path}: no such {what}")
        try:
            checked = check_deploy(read_net(deploy), str(deploy), allow_layers)
            input_blob, shape, latent, tops = deploy_blobs(deploy)
        except ProtoError as err:
            raise EncodeError(str(err)) from None
        fc7_blob = FC7_BLOB if FC7_BLOB in tops else None
        if shape is None or len(shape) != 4:
            raise EncodeError(f"{deploy}: the input '{input_blob}' needs a 4-D shape "
                              f"(N x C x H x W), got {shape}")
        check_model_weights(deploy, weights, allow_missing=allow_missing_weights)
        transform = Transform(crop=shape[2:], resize=resize, mean=mean_array(mean),
                              mean_values=mean_values, scale=scale, channels=shape[1])
        caffe = backends.get(backend)
        validate = getattr(caffe, "validate_net", None)  # real Caffe aborts on a failed CHECK
        try:
            if validate is not None:
                validate(str(deploy), "TEST", weights=str(weights))
            else:  # the same blob checks for every engine (value counts, shapes)
                plan_weight_copy(checked.params, weights)
        except ValueError as err:
            raise EncodeError(str(err)) from None
        net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
        return cls(net, transform, latent_blob=latent, fc7_blob=fc7_blob, input_blob=input_blob,
                   batch_size=batch_size, progress=progress)

    @classmethod
    def from_run(cls, run_dir, backend="auto", batch_size=BATCH_SIZE, progress=False,
                 allow_layers=(), allow_missing_weights=False):
        """An encoder for a training run folder (run.json, deploy.prototxt, final.caffemodel,
        and the TEST transform of train_val.prototxt; see :func:`dlbhc_caffe.runs.run_settings`).
        Any backend runs any run's files; ``backend`` picks the engine.
        """
        settings = runs.run_settings(run_dir)
        return cls.from_files(settings["deploy"], settings["weights"], mean=settings["mean"],
                              mean_values=settings["mean_values"], resize=settings["resize"],
                              scale=settings["scale"], backend=backend,
                              batch_size=batch_size, progress=progress,
                              allow_layers=allow_layers,
                              allow_missing_weights=allow_missing_weights)

    # ------------------------------------------------------------ forward

    def _check(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise EncodeError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        blobs = self.net.blobs
        for name in (self.input_blob, self.latent_blob, self.fc7_blob):
            if name is not None and name not in blobs:
                raise EncodeError(f"the net has no blob '{name}' (blobs: {', '.join(blobs)})")

    def _transform(self):
        if self.transform is not None:
            return self.transform
        shape = self.net.blobs[self.input_blob].data.shape
        return Transform(crop=shape[2:], channels=shape[1])

    def forward(self, batch):
        """(latent N x bits, fc7 N x D) of an N x C x H x W float32 batch of prepared inputs."""
        self._check()
        batch = np.asarray(batch, dtype=np.float32)
        blob = self.net.blobs[self.input_blob]
        if batch.ndim != 4 or batch.shape[1:] != blob.data.shape[1:]:
            raise EncodeError(f"a batch for input '{self.input_blob}' must be N x "
                              f"{' x '.join(map(str, blob.data.shape[1:]))}, got {batch.shape}")
        if blob.data.shape[0] != batch.shape[0]:
            blob.reshape(*batch.shape)
            self.net.reshape()
        self.net.forward(**{self.input_blob: batch})
        latent = np.array(self.net.blobs[self.latent_blob].data, dtype=np.float32)
        latent = latent.reshape(batch.shape[0], -1)
        if self.fc7_blob is None:
            fc7 = np.zeros((batch.shape[0], 0), np.float32)
        else:
            fc7 = np.array(self.net.blobs[self.fc7_blob].data, dtype=np.float32)
            fc7 = fc7.reshape(batch.shape[0], -1)
        return latent, fc7

    def _run(self, items, prepare, total, name_of, label_of=None, desc="encode"):
        """Prepare items in batches of batch_size, forward each, return Features."""
        self._check()
        bar = None
        if self.progress:
            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr)
        parts, batch, names, labels = [], [], [], []

        def flush():
            latent, fc7 = self.forward(np.stack(batch))
            parts.append(Features(latent, fc7, list(names),
                                  np.array(labels, np.int64) if label_of else None))
            if bar is not None:
                bar.update(len(batch))
            batch.clear(), names.clear(), labels.clear()

        try:
            for item in items:
                batch.append(prepare(item))
                names.append(name_of(item))
                if label_of:
                    labels.append(label_of(item))
                if len(batch) == self.batch_size:
                    flush()
            if batch:
                flush()
        finally:
            if bar is not None:
                bar.close()
        if not parts:
            raise EncodeError("nothing to encode: no images or records were given")
        return concat_features(parts)

    # ------------------------------------------------------------ sources

    def encode_images(self, paths, labels=None):
        """Features of image files, preprocessed as prepare_batch.m (see :class:`Transform`)."""
        paths = [str(p) for p in paths]
        if labels is not None:
            labels = np.asarray(labels, np.int64).ravel()
            if len(labels) != len(paths):
                raise EncodeError(f"{len(labels)} labels for {len(paths)} images: one label per "
                                  f"image")
        transform = self._transform()
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise EncodeError(f"{missing[0]}: no such image file"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        label_of = None if labels is None else (lambda item: labels[item[0]])
        return self._run(enumerate(paths),
                         lambda item: transform.prepare_image(read_image(item[1],
                                                                         transform.channels)),
                         len(paths), lambda item: item[1], label_of, desc="images")

    def encode_records(self, records, labels=None, names=None, crop=None, mean=None,
                       mean_values=None, scale=None):
        """Features of Caffe records (N x C x H x W uint8, BGR), with Caffe's TEST transform.

        The crop defaults to the net's input size; the mean / mean_values / scale to those of this
        encoder's transform (``mean`` may be a .binaryproto path); a mean file must be at the
        record size, as Caffe requires.
        """
        records = np.asarray(records)
        if records.ndim != 4:
            raise EncodeError(f"records must be N x C x H x W, got shape {records.shape}")
        transform = self._record_transform(records.shape[1:], crop, mean, mean_values, scale)
        if labels is not None:
            labels = np.asarray(labels, np.int64).ravel()
            if len(labels) != len(records):
                raise EncodeError(f"{len(labels)} labels for {len(records)} records")
        names = [f"#{i}" for i in range(len(records))] if names is None else list(names)
        if len(names) != len(records):
            raise EncodeError(f"{len(names)} names for {len(records)} records")
        label_of = None if labels is None else (lambda i: labels[i])
        return self._run(range(len(records)), lambda i: transform.prepare_record(records[i]),
                         len(records), lambda i: names[i], label_of, desc="records")

    def _record_transform(self, record_shape, crop=None, mean=None, mean_values=None, scale=None):
        base = self._transform()
        mean = mean_array(mean)
        if mean is None and mean_values is None:
            mean, mean_values = base.mean, base.mean_values
        channels, height, width = record_shape
        input_shape = self.net.blobs[self.input_blob].data.shape[1:]
        crop = size_pair(crop, "crop") or tuple(input_shape[1:])
        if tuple(crop) != tuple(input_shape[1:]) or channels != input_shape[0] \
                or crop[0] > height or crop[1] > width:
            raise EncodeError(f"records of {channels} x {height} x {width} cropped to "
                              f"{crop[0]}x{crop[1]} do not fit the net's input "
                              f"{' x '.join(map(str, input_shape))}")
        if mean is not None and tuple(np.shape(mean)[-2:]) != (height, width):
            raise EncodeError(f"the mean is {np.shape(mean)[-2]}x{np.shape(mean)[-1]} but the "
                              f"records are {height}x{width} (Caffe requires them equal)")
        return Transform(crop=crop, resize=(height, width), mean=mean, mean_values=mean_values,
                         scale=base.scale if scale is None else scale, channels=channels)

    def encode_db(self, path, backend=None, limit=None, **transform):
        """Features of a LevelDB/LMDB of Datum records in key order (Caffe's TEST transform).

        Rows are named ``<path>#<key>`` and carry the records' labels. ``transform`` takes the
        keyword arguments of :meth:`encode_records` (crop, mean, mean_values, scale).
        """
        limit = None if limit is None else int(limit)
        total = None  # only the progress bar needs it, and counting LevelDB reads it all
        if self.progress:
            total = count_records(path, backend)
            if limit is not None:
                total = min(total, limit)
        iterator = open_db(path, backend)
        state = {}

        def records():
            for n, (key, datum) in enumerate(iterator):
                if limit is not None and n >= limit:
                    break
                yield key, datum.label, decode_datum(datum)

        def prepare(item):
            if "transform" not in state:
                state["transform"] = self._record_transform(item[2].shape, **transform)
            return state["transform"].prepare_record(item[2])

        try:
            return self._run(records(), prepare, total, lambda item: f"{path}#{item[0]}",
                             lambda item: item[1], desc=Path(path).name)
        finally:
            iterator.close()


def encode_dataset(encoder, manifest):
    """(database, queries): the Features of a prepared dataset's train and test databases.

    The protocol of run_cifar10.m: the training split is the database, the test split the
    queries. Rows are named by the dataset's file lists (the original's layout), so retrieval
    results and ties read in database order.
    """
    encoded = []
    for split in ("train", "test"):
        features = encoder.encode_db(manifest[f"{split}_db"], manifest.get("backend"))
        names = manifest.get(f"{split}_file_list")
        if names and Path(names).is_file():
            features.paths = read_lines(names)[:len(features)]
        encoded.append(features)
    return tuple(encoded)


# ---------------------------------------------------------------- training runs

