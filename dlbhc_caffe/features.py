"""Encode: images or database records -> latent activations, hash codes and fc7 features.

One forward pass of a deploy net (Input -> ... -> fc7 -> fc8_kevin -> fc8_kevin_encode) gives
both things the search needs: the latent layer's sigmoid output (``latent``; ``codes`` are
``latent > 0.5``) and ``fc7`` as Caffe exposes that blob, after relu7 (relu7 and drop7 run in
place; dropout is the identity in the TEST phase).

Two ways in, each with the preprocessing of its source:

- image files (:meth:`Encoder.encode_images`): the original's prepare_batch.m. The image is read
  (gray -> 3 channels), resized to the mean's size (256 x 256 for the ImageNet mean) with bilinear
  interpolation on float pixels, turned from RGB into BGR, the mean is subtracted at that size, and
  the centre crop of the net's input size (227) is taken. See :class:`Transform` for the two
  places where we had to choose.
- records of a prepared database (:meth:`Encoder.encode_db`, :meth:`Encoder.encode_records`):
  Caffe's TEST-phase DataTransformer. No resize; centre crop to the net's input size; the mean
  file (at the record size) or mean values subtracted; times ``scale``.

Batches have any size (``batch_size``, default 10 as in demo.m); the last one is partial and the
input blob is reshaped for it, so nothing is padded.

>>> import numpy as np
>>> t = Transform(crop=(2, 2), resize=(4, 4), mean_values=(10.0, 20.0, 30.0))
>>> rgb = np.zeros((4, 4, 3), np.uint8); rgb[..., 0] = 255          # pure red
>>> t.prepare_image(rgb)[:, 0, 0].tolist()                            # B, G, R minus the means
[-10.0, -20.0, 225.0]
"""
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .fileio import atomic_write_bytes
from .proto import ProtoError, pb, read_mean, read_net
from .errors import DlbhcError
from .rules.validate import check_deploy
from .rules.weights import check_model_weights, plan_weight_copy

LATENT_BLOB = "fc8_kevin_encode"
FC7_BLOB = "fc7"
THRESHOLD = 0.5
BATCH_SIZE = 10  # demo.m's batch
FEATURE_SUFFIXES = (".npz", ".mat")


class EncodeError(DlbhcError):
    """Inputs that cannot be encoded with the given net (shapes, sizes, files); names them."""


def _pair(size, what):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise EncodeError(f"{what} must be positive, got {height}x{width}")
    return height, width


def centre_offset(size, crop):
    """Caffe's TEST-phase centre crop offset, ``(size - crop) // 2`` (database records).

    >>> centre_offset(256, 227), centre_offset(32, 32)
    (14, 0)
    """
    if crop > size:
        raise EncodeError(f"cannot crop {crop} from {size}: the crop is larger than the image")
    return (size - crop) // 2


def matlab_centre_offset(size, crop):
    """prepare_batch.m's centre crop offset (image files), 0-based.

    prepare_batch.m takes ``center = floor((IMAGE_DIM - CROPPED_DIM + 1) / 2) + 1`` as a 1-based
    index: offset 15 for 256 -> 227, one pixel right of and below Caffe's 14. The original's codes
    for image files (demo.m) came through this crop, so ours do too.

    >>> matlab_centre_offset(256, 227), matlab_centre_offset(32, 32)
    (15, 0)
    """
    if crop > size:
        raise EncodeError(f"cannot crop {crop} from {size}: the crop is larger than the image")
    return (size - crop + 1) // 2


def resize_bilinear(image, size):
    """H x W [x C] pixels -> float32 at ``size`` (height, width), bilinear, without rounding.

    Each channel goes through Pillow's bilinear filter in 32-bit float mode ("F"): pixel centres
    are mapped as MATLAB's imresize maps them (``u = (x + 0.5) / scale - 0.5``), and when shrinking
    the triangle kernel is widened by the scale factor, which is how imresize's default
    antialiasing works. prepare_batch.m resized ``single(im)``, so no rounding to uint8 happens
    between the resize and the mean subtraction; the same holds here. (skimage's resize with
    anti_aliasing applies a Gaussian prefilter instead, which matches MATLAB less well.)

    >>> resize_bilinear(np.array([[0, 10]], np.uint8), (1, 4)).tolist()
    [[0.0, 2.5, 7.5, 10.0]]
    """
    height, width = _pair(size, "resize")
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.shape[:2] == (height, width):
        return pixels.copy()
    planes = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    out = np.empty((height, width, planes.shape[2]), np.float32)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[:, :, c]))  # float32: mode "F"
        out[:, :, c] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return out[:, :, 0] if pixels.ndim == 2 else out


def _mean_array(mean):
    """A mean given as a .binaryproto path, read (:func:`dlbhc_caffe.proto.read_mean`); an array
    or None as it is."""
    if not isinstance(mean, (str, Path)):
        return mean
    try:
        return read_mean(mean)
    except ProtoError as err:
        raise EncodeError(str(err)) from None


def read_image(path, channels=3):
    """An image file as H x W x 3 RGB (gray replicated, as prepare_batch.m) or H x W gray, uint8."""
    from .datasets.records import ImageError, load_image  # noqa: PLC0415

    try:
        return load_image(path, gray=channels == 1)
    except ImageError as err:
        raise EncodeError(str(err)) from None


@dataclass(frozen=True)
class Transform:
    """How pixels become the net's input blob.

    crop: the net's input (height, width) -- the centre crop taken last.
    resize: (height, width) image files are resized to before the mean is subtracted; default the
        mean file's size, else ``crop``. Database records are never resized (Caffe does not).
    mean: a C x H x W BGR mean (a mean.binaryproto as :func:`dlbhc_caffe.proto.read_mean` gives
        it) at the resize / record size, subtracted before cropping; or ``mean_values``, one value
        or one per channel. At most one of the two.
    scale: multiplies the mean-subtracted pixels (Caffe's transform_param.scale).
    channels: 3 (BGR) or 1 (gray), the net's input channels.

    prepare_batch.m is this with the ImageNet mean, resize 256 and crop 227. Image files are
    cropped at prepare_batch.m's centre (:func:`matlab_centre_offset`), database records at
    Caffe's (:func:`centre_offset`), as the original did.
    """

    crop: tuple
    resize: tuple = None
    mean: np.ndarray = field(default=None, repr=False)
    mean_values: tuple = None
    scale: float = 1.0
    channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        if self.channels not in (1, 3):
            raise EncodeError(f"the net's input must have 1 or 3 channels, got {self.channels}")
        if self.mean is not None and self.mean_values is not None:
            raise EncodeError("give a mean file or mean values, not both")
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float32)
            if mean.ndim != 3 or mean.shape[0] != self.channels:
                raise EncodeError(f"the mean must be {self.channels} x H x W for a "
                                  f"{self.channels}-channel net, got shape {mean.shape}")
            object.__setattr__(self, "mean", mean)
        if self.mean_values is not None:
            values = tuple(float(v) for v in np.atleast_1d(self.mean_values))
            if len(values) not in (1, self.channels):
                raise EncodeError(f"mean values must be 1 or {self.channels}, got {len(values)}")
            object.__setattr__(self, "mean_values", values)
        resize = self.resize
        if resize is None:
            resize = self.mean.shape[1:] if self.mean is not None else self.crop
        resize = _pair(resize, "resize")
        if self.mean is not None and tuple(self.mean.shape[1:]) != resize:
            raise EncodeError(f"the mean is {self.mean.shape[1]}x{self.mean.shape[2]} but images "
                              f"are resized to {resize[0]}x{resize[1]}: they must agree")
        if any(crop > size for size, crop in zip(resize, self.crop)):
            raise EncodeError(f"the net's input ({self.crop[0]}x{self.crop[1]}) is larger "
                              f"than the resize size ({resize[0]}x{resize[1]})")
        object.__setattr__(self, "resize", resize)

    def _subtract_crop_scale(self, chw, offset=centre_offset):
        """Mean at full size, centre crop, scale: the shared tail of both paths (float32)."""
        _, height, width = chw.shape
        if self.mean is not None:
            if self.mean.shape[1:] != (height, width):
                raise EncodeError(f"the mean is {self.mean.shape[1]}x{self.mean.shape[2]} but the "
                                  f"image is {height}x{width} (Caffe requires them equal)")
            chw = chw - self.mean
        elif self.mean_values is not None:
            chw = chw - np.asarray(self.mean_values, np.float32).reshape(-1, 1, 1)
        top = offset(height, self.crop[0])
        left = offset(width, self.crop[1])
        out = chw[:, top:top + self.crop[0], left:left + self.crop[1]]
        if self.scale != 1.0:
            out = out * np.float32(self.scale)
        return np.ascontiguousarray(out, dtype=np.float32)

    def prepare_image(self, image):
        """One image (H x W x 3 RGB or H x W gray, any numeric dtype) -> C x crop float32 input.

        prepare_batch.m: resize (bilinear, float), gray -> 3 channels, RGB -> BGR, subtract the
        mean, centre crop.
        """
        pixels = np.asarray(image)
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[:, :, :3]
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
            raise EncodeError(f"an image must be H x W or H x W x 3, got shape {pixels.shape}")
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        resized = resize_bilinear(pixels, self.resize)
        if self.channels == 1:
            if resized.ndim == 3:  # ITU-R 601-2 luma, Pillow's convert("L") weights
                resized = resized @ np.array([0.299, 0.587, 0.114], np.float32)
            chw = resized[np.newaxis]
        else:
            if resized.ndim == 2:
                resized = np.repeat(resized[:, :, np.newaxis], 3, axis=2)
            chw = resized[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, H x W x C -> C x H x W
        return self._subtract_crop_scale(chw, offset=matlab_centre_offset)

    def prepare_record(self, record):
        """One C x H x W record (BGR or gray, uint8) -> C x crop float32: Caffe's TEST transform."""
        pixels = np.asarray(record)
        if pixels.ndim != 3 or pixels.shape[0] != self.channels:
            raise EncodeError(f"a record for this net must be {self.channels} x H x W, got shape "
                              f"{pixels.shape}")
        return self._subtract_crop_scale(pixels.astype(np.float32))


@dataclass
class Features:
    """What encoding gives, row-aligned: latent sigmoid outputs, fc7, and where each row came from.

    ``codes`` (uint8 0/1) are ``latent > 0.5``. ``paths`` name each row (image files, or
    ``<database>#<key>`` for records); ``labels`` are the records' labels when known.
    """

    latent: np.ndarray
    fc7: np.ndarray
    paths: list
    labels: np.ndarray = None

    @property
    def codes(self):
        return (self.latent > THRESHOLD).astype(np.uint8)

    @property
    def bits(self):
        return self.latent.shape[1]

    def __len__(self):
        return self.latent.shape[0]

    def save(self, path):
        """Write ``.npz`` (keys codes, fc7, latent, paths[, labels]) or ``.mat`` (the same, for
        MATLAB: one row per image, paths as a cell array). Written whole or not at all.

        >>> import tempfile, numpy as np
        >>> f = Features(np.array([[0.9, 0.1]], np.float32), np.ones((1, 3), np.float32), ["a.jpg"])
        >>> p = f.save(tempfile.mkdtemp() + "/codes.npz")
        >>> Features.load(p).codes.tolist()
        [[1, 0]]
        """
        path = Path(path)
        arrays = {"codes": self.codes, "fc7": self.fc7, "latent": self.latent,
                  "paths": np.array([str(p) for p in self.paths], dtype=str)}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, np.int64)
        out = io.BytesIO()
        if path.suffix == ".npz":
            np.savez(out, **arrays)
        elif path.suffix == ".mat":
            from scipy.io import savemat  # noqa: PLC0415

            arrays["paths"] = np.array([str(p) for p in self.paths], dtype=object).reshape(-1, 1)
            savemat(out, arrays, do_compression=True)
        else:
            raise EncodeError(f"{path}: features are saved as .npz or .mat, not "
                              f"'{path.suffix or 'no suffix'}'")
        return atomic_write_bytes(path, out.getvalue())

    @classmethod
    def load(cls, path):
        """Read features written by :meth:`save` (.npz or .mat)."""
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            paths = [str(p) for p in arrays["paths"]]
        elif path.suffix == ".mat":
            from scipy.io import loadmat  # noqa: PLC0415

            arrays = loadmat(path)
            paths = [str(np.asarray(p).ravel()[0]) for p in np.asarray(arrays["paths"]).ravel()]
        else:
            raise EncodeError(f"{path}: not a .npz or .mat features file")
        labels = arrays.get("labels")
        return cls(latent=np.asarray(arrays["latent"], np.float32),
                   fc7=np.asarray(arrays["fc7"], np.float32), paths=paths,
                   labels=None if labels is None else np.asarray(labels, np.int64).ravel())


def _concat(features):
    if not features:
        return None
    latent = np.concatenate([f.latent for f in features])
    fc7 = np.concatenate([f.fc7 for f in features])
    paths = [p for f in features for p in f.paths]
    labels = None
    if all(f.labels is not None for f in features):
        labels = np.concatenate([f.labels for f in features])
    return Features(latent, fc7, paths, labels)


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
        transform = Transform(crop=shape[2:], resize=resize, mean=_mean_array(mean),
                              mean_values=mean_values, scale=scale, channels=shape[1])
        from . import backends  # noqa: PLC0415

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
                 allow_missing_weights=False):
        """An encoder for a training run folder (run.json, deploy.prototxt, final.caffemodel,
        and the TEST transform of train_val.prototxt; see :func:`run_settings`). Any backend runs
        any run's files; ``backend`` picks the engine.
        """
        settings = run_settings(run_dir)
        return cls.from_files(settings["deploy"], settings["weights"], mean=settings["mean"],
                              mean_values=settings["mean_values"], resize=settings["resize"],
                              scale=settings["scale"], backend=backend,
                              batch_size=batch_size, progress=progress,
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
            from tqdm import tqdm  # noqa: PLC0415

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
        return _concat(parts)

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
        mean = _mean_array(mean)
        if mean is None and mean_values is None:
            mean, mean_values = base.mean, base.mean_values
        channels, height, width = record_shape
        input_shape = self.net.blobs[self.input_blob].data.shape[1:]
        crop = _pair(crop, "crop") or tuple(input_shape[1:])
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
        from .datasets.db import count_records, open_db  # noqa: PLC0415
        from .datasets.records import decode_datum  # noqa: PLC0415

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
    from .datasets import read_lines  # noqa: PLC0415

    encoded = []
    for split in ("train", "test"):
        features = encoder.encode_db(manifest[f"{split}_db"], manifest.get("backend"))
        names = manifest.get(f"{split}_file_list")
        if names and Path(names).is_file():
            features.paths = read_lines(names)[:len(features)]
        encoded.append(features)
    return tuple(encoded)


# ---------------------------------------------------------------- training runs

def _first(mapping, *keys):
    for key in keys:
        if isinstance(mapping, dict) and mapping.get(key) not in (None, ""):
            return mapping[key]
    return None


def data_transform_param(train_val, phase=pb.TEST):
    """The transform_param of a train_val's data layer in ``phase`` (None when there is none)."""
    net = read_net(train_val)
    for layer in net.layer:
        if not layer.HasField("transform_param"):
            continue
        phases = [rule.phase for rule in layer.include if rule.HasField("phase")]
        if not phases or phase in phases:
            return layer.transform_param
    return None


def run_settings(run_dir):
    """What encoding needs from a training run folder (design.md's ``runs/<name>/``).

    The net is run.json's deploy and final_model (by default deploy.prototxt and
    final.caffemodel in the folder); the transform is the TEST-phase data layer's transform_param
    in its train_val (mean file or values, scale) -- what the net saw while it was tested -- or
    else run.json's ``mean`` ({file, values, scale}). Image files are resized to the mean file's
    size, else to the dataset's record size (run.json's ``record_shape``).

    Returns a dict: deploy, weights, mean (a path or None), mean_values, resize, scale, backend,
    bits, run (the parsed run.json).
    """
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise EncodeError(f"{run_dir}: not a training run (no run.json); train one with "
                          f"tools/train.py, or give the deploy, model and mean")
    try:
        run = json.loads(run_json.read_text())
    except (OSError, ValueError) as err:
        raise EncodeError(f"{run_json}: not readable JSON ({err})") from None

    def resolve(value):
        if value in (None, ""):
            return None
        path = Path(str(value))
        return path if path.is_absolute() else run_dir / path

    deploy = resolve(_first(run, "deploy")) or run_dir / "deploy.prototxt"
    weights = resolve(_first(run, "final_model")) or run_dir / "final.caffemodel"
    if not Path(weights).is_file():
        status = run.get("status")
        raise EncodeError(f"{weights}: no such caffemodel; the run in {run_dir} has not finished"
                          + (f" (status: {status})" if status else ""))
    mean_file, mean_values, scale = None, None, 1.0
    train_val = resolve(_first(run, "train_val")) or run_dir / "train_val.prototxt"
    param = data_transform_param(train_val) if train_val.is_file() else None
    if param is not None:
        mean_file = param.mean_file or None
        mean_values = tuple(param.mean_value) or None
        scale = param.scale
    else:  # run.json's record of it
        mean = run.get("mean") if isinstance(run.get("mean"), dict) else {}
        mean_file = _first(mean, "file")
        mean_values = _first(mean, "values")
        scale = float(_first(mean, "scale") or 1.0)
    if mean_file is not None:
        mean_file = resolve(mean_file)
    manifest = run.get("dataset_manifest") if isinstance(run.get("dataset_manifest"), dict) else {}
    resize = None
    shape = _first(run, "record_shape") or _first(manifest, "record_shape")
    if mean_file is None and shape is not None and len(shape) == 3:
        resize = (int(shape[1]), int(shape[2]))
    return {"deploy": Path(deploy), "weights": Path(weights), "mean": mean_file,
            "mean_values": mean_values, "resize": resize, "scale": scale,
            "backend": run.get("backend") or "auto", "bits": run.get("bits"), "run": run}
