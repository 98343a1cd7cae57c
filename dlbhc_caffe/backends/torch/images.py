"""Image files of the ImageData layer: Caffe's ReadImageToCVMat (OpenCV's decode and
INTER_LINEAR resize) and its `path label` source lists."""
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import DataError


def resize_bilinear(image, height, width):
    """H x W [x C] uint8 resized as OpenCV's cv::resize INTER_LINEAR (half-pixel centres, no
    anti-aliasing, edge clamp), rounded to uint8."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image

    def axis(dst, src):
        pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        low = np.floor(pos)
        frac = pos - low
        low = low.astype(np.int64)
        frac[low < 0] = 0.0
        low[low < 0] = 0
        high = np.minimum(low + 1, src - 1)
        at_end = low >= src - 1
        frac[at_end] = 0.0
        low[at_end] = src - 1
        return low, high, frac.astype(np.float32)

    y0, y1, fy = axis(height, src_h)
    x0, x1, fx = axis(width, src_w)
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    fx = fx[None, :, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    fy = fy[:, None, None]
    out = np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out[:, :, 0]


def read_image(path, color, height, width, where):
    """An image file as C x H x W uint8 (BGR, or 1 gray channel), resized when both height and
    width are given (Caffe's ReadImageToCVMat)."""
    try:
        with Image.open(path) as pil:
            pil.load()
            array = np.asarray(pil.convert("RGB" if color else "L"))
    except FileNotFoundError:
        raise DataError(f"{where}: could not load {path}: no such file") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: could not load {path} ({err})") from None
    if height > 0 and width > 0:
        array = resize_bilinear(array, height, width)
    if color:
        return np.ascontiguousarray(array[:, :, ::-1].transpose(2, 0, 1))
    return array[None]


def read_image_list(source, where):
    """[(path, label)] from an ImageData source list: `path label` per line, the label after
    the last space."""
    try:
        text = Path(source).read_text()
    except OSError as err:
        raise DataError(f"{where}: cannot read the image list '{source}' ({err.strerror})") \
            from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        path, sep, label = line.rpartition(" ")
        try:
            lines.append((path if sep else line, int(label) if sep else 0))
        except ValueError:
            raise DataError(f"{where}: {source}:{number}: label {label!r} is not an integer") \
                from None
    if not lines:
        raise DataError(f"{where}: the image list '{source}' is empty")
    return lines
