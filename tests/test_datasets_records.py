"""Images -> Datum records: size, channel order (BGR), orientation, encodings, decoding."""
import numpy as np
import pytest
from PIL import Image

from dlbhc_caffe.datasets.records import (ImageError, decode_datum, load_image, resize_image,
                                          to_record)


def _rgb_test_image(h=8, w=6):
    """R = row index ramp, G = column ramp, B = constant: orientation and order are visible."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows * 20, cols * 30, np.full((h, w), 7)], axis=-1).astype(np.uint8)


def test_raw_record_is_bgr_channel_major_top_row_first():
    rgb = _rgb_test_image()
    datum, chw = to_record(rgb, label=4, size=(8, 6))
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 8, 6, 4)
    assert not datum.encoded
    pixels = np.frombuffer(datum.data, np.uint8).reshape(3, 8, 6)
    np.testing.assert_array_equal(pixels, chw)
    np.testing.assert_array_equal(pixels[0], rgb[..., 2])  # B first
    np.testing.assert_array_equal(pixels[1], rgb[..., 1])
    np.testing.assert_array_equal(pixels[2], rgb[..., 0])  # R last
    assert pixels[2, 0, 0] == 0 and pixels[2, 7, 0] == 140  # row 0 is the top


def test_resize_is_bilinear_like_skimage_order1():
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ours = resize_image(rgb, 256).astype(np.float64)
    ref = resize(rgb, (256, 256), order=1, mode="edge", anti_aliasing=False,
                 preserve_range=True)
    assert ours.shape == (256, 256, 3)
    assert np.abs(ours - ref).max() <= 1.0


def test_gray_replicated_to_three_channels_or_kept_single():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    _, three = to_record(gray, 0, size=4)
    assert three.shape == (3, 4, 4)
    assert all((three[c] == gray).all() for c in range(3))
    _, one = to_record(gray, 0, size=4, gray=True)
    assert one.shape == (1, 4, 4) and (one[0] == gray).all()
    _, from_rgb = to_record(np.stack([gray] * 3, -1), 0, size=4, gray=True)
    np.testing.assert_array_equal(from_rgb[0], gray)


@pytest.mark.parametrize("gray", [False, True])
def test_png_record_decodes_to_the_same_pixels(gray):
    rgb = _rgb_test_image()
    datum, chw = to_record(rgb, 2, size=(16, 12), gray=gray, encoding="png")
    assert datum.encoded and datum.data[:4] == b"\x89PNG"
    np.testing.assert_array_equal(decode_datum(datum), chw)
    # The PNG itself holds the image the right way round, in RGB (what OpenCV decodes to BGR).
    from io import BytesIO

    png = np.asarray(Image.open(BytesIO(datum.data)))
    np.testing.assert_array_equal(png if gray else png[..., ::-1].transpose(2, 0, 1),
                                  chw[0] if gray else chw)


def test_jpg_record_decodes_close():
    rgb = np.full((32, 32, 3), (200, 100, 50), np.uint8)
    datum, chw = to_record(rgb, 1, size=32, encoding="jpg")
    assert datum.data[:2] == b"\xff\xd8"
    assert np.abs(decode_datum(datum).astype(int) - chw).max() <= 3


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="uint8"):
        to_record(np.zeros((4, 4), np.float32), 0, 4)
    with pytest.raises(ValueError, match="encoding"):
        to_record(np.zeros((4, 4), np.uint8), 0, 4, encoding="gif")


def test_load_image_names_missing_and_corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_rgb_test_image()).save(good)
    np.testing.assert_array_equal(load_image(good), _rgb_test_image())
    assert load_image(good, gray=True).ndim == 2
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="corrupt.jpg"):
        load_image(corrupt)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(noise)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(noise.read_bytes()[:2000])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("module", ["records", "db", "download", "mean", "manifest", "__init__"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    name = "dlbhc_caffe.datasets" + ("" if module == "__init__" else f".{module}")
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


def test_mean_accumulator_is_exact_past_its_uint16_chunks():
    from dlbhc_caffe.datasets.mean import MeanAccumulator

    images = np.full((600, 2, 3, 3), 255, np.uint8)  # 600 x 255 overflows uint16 sums
    images[::7] = 1
    acc = MeanAccumulator()
    for image in images:
        acc.add(image)
    assert acc.count == 600
    np.testing.assert_allclose(acc.mean(), images.mean(axis=0), rtol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((1, 3, 3), np.uint8))
