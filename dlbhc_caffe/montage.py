"""Retrieval results as a PNG montage: one row per query, the query first, then its top k.

Each picture is a :class:`Tile`: an image (a file path, a PIL image, or an H x W / H x W x 3
uint8 array; :func:`record_to_rgb` turns a Caffe record into one), a caption of up to a few lines
(rank, distance, label...), and an optional verdict that colours its frame: green when a result
shares the query's label, red when not, grey when unknown.

>>> import tempfile, numpy as np
>>> query = Tile(np.zeros((8, 8), np.uint8), "query\\nlabel 0")
>>> hits = [Tile(np.full((8, 8, 3), 255, np.uint8), "#1 d=0", match=True)]
>>> path = write_montage(tempfile.mkdtemp() + "/m.png", [(query, hits)])
>>> from PIL import Image
>>> Image.open(path).size[0] > 2 * 96
True
"""
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_write_bytes

TILE = 96
PAD = 6
FRAME = 3
LINE = 12
COLOURS = {True: (40, 160, 60), False: (200, 50, 50), None: (170, 170, 170)}
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@dataclass
class Tile:
    """One picture of the montage: image, caption (lines split on newlines), match verdict."""

    image: object
    caption: str = ""
    match: bool = None


def record_to_rgb(record):
    """A Caffe record (C x H x W, BGR or gray) as an H x W x 3 / H x W uint8 picture."""
    record = np.asarray(record)
    if record.ndim != 3 or record.shape[0] not in (1, 3):
        raise ValueError(f"a record is 1 or 3 x H x W, got shape {record.shape}")
    pixels = np.clip(record, 0, 255).astype(np.uint8)
    if record.shape[0] == 1:
        return pixels[0]
    return np.ascontiguousarray(pixels[::-1].transpose(1, 2, 0))


def _picture(image):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as pil:
                return pil.convert("RGB")
        except (OSError, ValueError) as err:
            raise ValueError(f"{image}: cannot be read as an image for the montage ({err})") \
                from None
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"a montage image is H x W or H x W x 3, got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _fit(picture, size):
    """Scale to fit size x size, keeping the aspect; small pictures are enlarged without blur."""
    width, height = picture.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    return picture.resize(new, resample)


def render_montage(rows, tile=TILE, title=None):
    """A PIL image of ``rows``: a list of (query Tile, [result Tiles]), one line each."""
    rows = list(rows)
    if not rows:
        raise ValueError("nothing to draw: no queries")
    font = ImageFont.load_default()
    lines = max(len(t.caption.split("\n")) for q, results in rows for t in [q, *results])
    cell_w = tile + 2 * FRAME + PAD
    cell_h = tile + 2 * FRAME + PAD + LINE * lines
    gap = 2 * PAD  # between the query and its results
    columns = 1 + max(len(results) for _, results in rows)
    top = LINE + PAD if title else 0
    width = PAD + columns * cell_w + gap
    height = top + PAD + len(rows) * cell_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD // 2), title, fill=TEXT, font=font)
    for r, (query, results) in enumerate(rows):
        y = top + PAD + r * cell_h
        for c, item in enumerate([query, *results]):
            x = PAD + c * cell_w + (gap if c else 0)
            frame = COLOURS[item.match] if c else (60, 90, 200)
            draw.rectangle([x, y, x + tile + 2 * FRAME - 1, y + tile + 2 * FRAME - 1], fill=frame)
            picture = _fit(_picture(item.image), tile)
            px = x + FRAME + (tile - picture.size[0]) // 2
            py = y + FRAME + (tile - picture.size[1]) // 2
            draw.rectangle([x + FRAME, y + FRAME, x + FRAME + tile - 1, y + FRAME + tile - 1],
                           fill=BACKGROUND)
            canvas.paste(picture, (px, py))
            for i, line in enumerate(item.caption.split("\n")):
                draw.text((x, y + tile + 2 * FRAME + 1 + i * LINE), line, fill=TEXT, font=font)
    return canvas


def write_montage(path, rows, tile=TILE, title=None):
    """Render ``rows`` (see :func:`render_montage`) and write a PNG, whole or not at all."""
    out = io.BytesIO()
    render_montage(rows, tile=tile, title=title).save(out, format="PNG")
    return atomic_write_bytes(path, out.getvalue())
