"""Images to Caffe Datum records and back.

A record is what Caffe's convert_imageset writes: the image resized (bilinear) to the record
size, in Caffe's channel order (BGR, or one gray channel), channel-major (C x H x W) uint8 pixels
in `Datum.data` -- or, with an encoding, the PNG/JPEG file bytes with `Datum.encoded` set (Caffe
decodes those only when built with OpenCV). Row 0 is the top of the image.

Images come in as numpy arrays in the usual image layout: H x W (gray) or H x W x 3 (RGB), uint8.

>>> import numpy as np
>>> rgb = np.zeros((8, 8, 3), np.uint8); rgb[..., 0] = 255          # pure red
>>> datum, chw = to_record(rgb, label=3, size=16)
>>> chw.shape, chw[:, 0, 0].tolist(), datum.label                 # B, G, R
((3, 16, 16), [0, 0, 255], 3)
>>> (decode_datum(datum) == chw).all()
True
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..proto import datum_from_array, datum_to_array, pb
from ..errors import DlbhcError

ENCODINGS = ("raw", "png", "jpg")
JPEG_QUALITY = 95  # OpenCV's imencode default, which convert_imageset --encoded used


class ImageError(DlbhcError):
    """An image file that cannot be read (missing, unreadable or corrupt); names the file."""


class SizeError(DlbhcError):
    """A size (of records, a crop, a resize) that is not one or two positive integers."""


def record_size(size, what="a record size"):
    """(height, width) from an int (square) or a (height, width) pair; SizeError naming `what`
    unless both are positive. The one size reader of prepare and encode."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise SizeError(f"{what} must be positive, got {height}x{width}")
    return height, width


def resize_image(image, size):
    """`image` (H x W or H x W x 3 uint8) resized to `size` with bilinear interpolation.

    Pixel centres are mapped as OpenCV's INTER_LINEAR (convert_imageset) and MATLAB's imresize
    do when enlarging; an image already at `size` is returned as it is.
    """
    height, width = record_size(size)
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    return np.asarray(resized)


def to_caffe_layout(image, gray=False):
    """H x W [x 3] RGB uint8 -> C x H x W in Caffe's order: BGR (gray replicated), or 1 channel."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"an image must be H x W or H x W x 3 uint8, got {image.dtype} "
                         f"{image.shape}")
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"a colour image must have 3 channels (RGB), got shape {image.shape}")
    if gray:
        if image.ndim == 3:
            image = np.asarray(Image.fromarray(image).convert("L"))
        return image[np.newaxis]
    if image.ndim == 2:
        return np.repeat(image[np.newaxis], 3, axis=0)
    return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))


def encode_image(chw, encoding):
    """PNG or JPEG bytes of a Caffe-layout image (BGR or gray), stored as RGB/L like OpenCV does."""
    if encoding not in ("png", "jpg"):
        raise ValueError(f"encoding must be 'png' or 'jpg', got {encoding!r}")
    if chw.shape[0] == 1:
        pil = Image.fromarray(chw[0], "L")
    else:
        pil = Image.fromarray(np.ascontiguousarray(chw[::-1].transpose(1, 2, 0)), "RGB")
    out = io.BytesIO()
    if encoding == "png":
        pil.save(out, format="PNG", compress_level=1)  # OpenCV imencode's default
    else:
        pil.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def to_record(image, label, size=256, gray=False, encoding="raw"):
    """(Datum, C x H x W uint8 pixels) of an H x W [x 3] RGB image.

    With gray, a colour image is made gray first, then resized (convert_imageset --gray reads
    the file gray). The pixels returned are the record's content (what a decoder gives back for
    "raw" and "png"; a JPEG record decodes to close to them).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    image = np.asarray(image)
    if gray and image.ndim == 3 and image.dtype == np.uint8 and image.shape[2] == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))
    chw = to_caffe_layout(resize_image(image, size), gray=gray)
    c, h, w = chw.shape
    if encoding == "raw":
        datum = datum_from_array(chw, label)
    else:
        # Caffe's encoded records leave the size fields to the decoder; ours keep them for readers.
        datum = pb.Datum(channels=c, height=h, width=w, data=encode_image(chw, encoding),
                         label=int(label), encoded=True)
    return datum, chw


def decode_datum(datum):
    """A Datum's pixels as C x H x W uint8 (BGR or gray), raw or encoded."""
    if not datum.encoded:
        return datum_to_array(datum)
    try:
        pil = Image.open(io.BytesIO(datum.data))
        pil.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise ImageError(f"encoded Datum (label {datum.label}) does not decode: {err}") from None
    array = np.asarray(pil if pil.mode in ("L", "RGB") else pil.convert("RGB"))
    return to_caffe_layout(array, gray=array.ndim == 2)


def load_image(path, gray=False):
    """An image file as H x W (gray) or H x W x 3 (RGB) uint8; ImageError names the file."""
    path = Path(path)
    try:
        with Image.open(path) as pil:
            pil.load()
            return np.asarray(pil.convert("L" if gray else "RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from None
