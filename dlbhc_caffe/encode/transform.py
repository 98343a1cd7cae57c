"""How pixels become a deploy net's input: the encoder's preprocessing (transform.py).

Two ways in, each with the preprocessing of its source:

- image files (:meth:`Transform.prepare_image`): the original's prepare_batch.m. The image is
  read (gray -> 3 channels), resized to the mean's size (256 x 256 for the ImageNet mean) with
  bilinear interpolation on float pixels, turned from RGB into BGR, the mean is subtracted at that
  size, and the centre crop of the net's input size (227) is taken.
- records of a prepared database (:meth:`Transform.prepare_record`): Caffe's TEST-phase
  DataTransformer. No resize; centre crop to the net's input size; the mean file (at the record
  size) or mean values subtracted; times ``scale``. Caffe's own checks on these come from
  :mod:`dlbhc_caffe.rules.transform`, as for both engines.

>>> import numpy as np
>>> t = Transform(crop=(2, 2), resize=(4, 4), mean_values=(10.0, 20.0, 30.0))
>>> rgb = np.zeros((4, 4, 3), np.uint8); rgb[..., 0] = 255          # pure red
>>> t.prepare_image(rgb)[:, 0, 0].tolist()                            # B, G, R minus the means
[-10.0, -20.0, 225.0]
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..datasets.records import ImageError, SizeError, load_image, record_size
from ..errors import DlbhcError
from ..proto import ProtoError, read_mean
from ..rules.transform import TransformError, check_mean_shape, check_mean_values

class EncodeError(DlbhcError):
    """Inputs that cannot be encoded with the given net (shapes, sizes, files); names them."""


def size_pair(size, what):
    """None, or (height, width) of an int or a pair (datasets.records.record_size)."""
    if size is None:
        return None
    try:
        return record_size(size, what)
    except SizeError as err:
        raise EncodeError(str(err)) from None


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
    height, width = size_pair(size, "resize")
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.shape[:2] == (height, width):
        return pixels.copy()
    planes = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    out = np.empty((height, width, planes.shape[2]), np.float32)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[:, :, c]))  # float32: mode "F"
        out[:, :, c] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return out[:, :, 0] if pixels.ndim == 2 else out


def mean_array(mean):
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
        object.__setattr__(self, "crop", size_pair(self.crop, "crop"))
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
            try:
                check_mean_values(len(values), self.channels, "mean values")
            except TransformError as err:
                raise EncodeError(str(err)) from None
            if not values:
                raise EncodeError(f"mean values: give 1 or {self.channels}, got none")
            object.__setattr__(self, "mean_values", values)
        resize = self.resize
        if resize is None:
            resize = self.mean.shape[1:] if self.mean is not None else self.crop
        resize = size_pair(resize, "resize")
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
            try:
                check_mean_shape(self.mean.shape, chw.shape)
            except TransformError as err:
                raise EncodeError(str(err)) from None
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


