"""Caffe's DataTransformer checks (data_transformer.cpp), once, for every engine and the encoder.

What a transform_param may say (`check_param`), and what a record of a given C x H x W shape
needs from it (`transformed_shape`): the crop fits the record, a mean file has the record's size
(Caffe subtracts it at the record size, before cropping), mean values are one or one a channel.
Real Caffe CHECK-aborts on each of these; the torch backend, the real-Caffe validation and the
encoder all ask here first, so each failure is one line naming `where` (a layer, a file).

>>> transformed_shape((3, 32, 32), crop=28, mean_shape=(3, 32, 32))
(3, 28, 28)
>>> transformed_shape((3, 8, 8), crop=9, where="layer 'data'")
Traceback (most recent call last):
...
dlbhc_caffe.rules.transform.TransformError: layer 'data': crop_size 9 is larger than the records (8x8)
"""
from ..errors import DlbhcError


class TransformError(DlbhcError):
    """A transform_param that cannot transform the records; names the layer or file."""


def _fail(where, message):
    raise TransformError(f"{where}: {message}" if where else message)


def check_param(param, where=""):
    """Raise TransformError for a TransformationParameter Caffe refuses whatever the records."""
    if param.force_color and param.force_gray:
        _fail(where, "cannot set both force_color and force_gray")
    if param.HasField("mean_file") and len(param.mean_value):
        _fail(where, "cannot specify mean_file and mean_value at the same time (Caffe takes one)")


def check_mean_values(count, channels, where=""):
    """Raise TransformError unless `count` mean values suit `channels` (1, or one a channel)."""
    if count not in (0, 1, channels):
        _fail(where, f"{count} mean_value entries for {channels}-channel records: give 1 "
                     f"mean_value or as many as channels")


def check_mean_shape(mean_shape, record_shape, where="", mean_name="the mean"):
    """Raise TransformError unless a mean of `mean_shape` (C, H, W) has the records' shape."""
    if tuple(mean_shape) != tuple(record_shape):
        _fail(where, f"{mean_name} is {'x'.join(map(str, mean_shape))} (CxHxW) but the records "
                     f"are {'x'.join(map(str, record_shape))} (Caffe requires them equal: it "
                     f"subtracts the mean at the record size, before cropping)")


def transformed_shape(record_shape, crop=0, mean_shape=None, mean_values=0, where="",
                      mean_name="the mean"):
    """The C x H x W a record of `record_shape` becomes, after Caffe's checks.

    crop: crop_size (0: none), or (height, width); mean_shape: the mean file's (C, H, W) or None;
    mean_values: how many mean_value entries there are.
    """
    channels, height, width = (int(d) for d in record_shape)
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else (int(c) for c in crop)
    if crop_h > height or crop_w > width:
        size = crop_h if crop_h == crop_w else f"{crop_h}x{crop_w}"
        _fail(where, f"crop_size {size} is larger than the records ({height}x{width})")
    if mean_shape is not None:
        check_mean_shape(mean_shape, (channels, height, width), where, mean_name)
    check_mean_values(mean_values, channels, where)
    return channels, crop_h or height, crop_w or width
