"""pycaffe's `caffe.io`: BlobProto / Datum <-> numpy, image loading and resizing, the input
Transformer and 10-crop oversampling, with Caffe's semantics (python/caffe/io.py of BVLC Caffe,
as the build here patches it for current numpy and scikit-image):

- blobproto_to_array: the legacy num/channels/height/width shape when any of them is set, else
  the BlobShape (a blob with neither and more than one value is a ValueError, as numpy's reshape
  to () raises); the values come back as float64, as Caffe's np.array(repeated float) does.
- array_to_datum: uint8 arrays as raw bytes, anything else as float_data; the label only if given.
- load_image: scikit-image's imread -> img_as_float -> float32 in [0, 1], H x W x 3 (or x 1).
- resize_image: 1- and 3-channel images through skimage.transform.resize on the image stretched
  to [0, 1] (order 1, mode constant), others through scipy's zoom; float32.

>>> import numpy as np
>>> t = Transformer({"data": (1, 3, 4, 4)})
>>> t.set_transpose("data", (2, 0, 1)); t.set_raw_scale("data", 255.0)
>>> t.preprocess("data", np.ones((4, 4, 3), np.float32)).shape
(3, 4, 4)
"""
import numpy as np

from ...proto import pb

caffe_pb2 = pb


# ---------------------------------------------------------------- proto <-> numpy

def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as a numpy array of its shape."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """A BlobProto with `arr`'s shape and values (and `diff`'s values when given)."""
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(np.asarray(arr, dtype=float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """The serialized BlobProtoVector of a list of arrays."""
    vector = pb.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(serialized):
    """The arrays of a serialized BlobProtoVector."""
    vector = pb.BlobProtoVector()
    vector.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vector.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a C x H x W array: raw bytes for uint8, float_data otherwise."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = pb.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, dtype=float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum):
    """A Datum's values as C x H x W: uint8 for raw bytes, float64 for float_data."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data).astype(float).reshape(shape)


# ---------------------------------------------------------------- images

def load_image(filename, color=True):
    """An image as float32 in [0, 1]: H x W x 3 (RGB) or, with color=False, H x W x 1."""
    import skimage  # noqa: PLC0415 - scikit-image loads slowly; only image users pay
    import skimage.io  # noqa: PLC0415

    img = skimage.img_as_float(skimage.io.imread(filename, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im, new_dims, interp_order=1):
    """`im` (H x W x K) resized to new_dims (height, width), float32."""
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if not high > low:  # a constant image: skimage would divide by zero
            out = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
            out.fill(low)
            return out
        from skimage.transform import resize  # noqa: PLC0415

        unit = (im - low) / (high - low)
        resized = resize(unit, new_dims, order=interp_order, mode="constant") * (high - low) + low
    else:
        from scipy.ndimage import zoom  # noqa: PLC0415

        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The 4 corner crops, the centre crop and their mirror images of each image:
    (10 * N) x h x w x K float32."""
    shape = np.array(images[0].shape)
    crop = np.array(crop_dims)
    centre = shape[:2] / 2.0
    boxes = np.empty((5, 4), dtype=int)
    corners = [(i, j) for i in (0, shape[0] - crop[0]) for j in (0, shape[1] - crop[1])]
    for k, (i, j) in enumerate(corners):
        boxes[k] = (i, j, i + crop[0], j + crop[1])
    boxes[4] = np.tile(centre, (1, 2)) + np.concatenate([-crop / 2.0, crop / 2.0])
    boxes = np.tile(boxes, (2, 1))
    crops = np.empty((10 * len(images), crop[0], crop[1], shape[-1]), dtype=np.float32)
    at = 0
    for im in images:
        for top, left, bottom, right in boxes:
            crops[at] = im[top:bottom, left:right, :]
            at += 1
        crops[at - 5:at] = crops[at - 5:at, :, ::-1, :]  # the last five are mirrored
    return crops


# ---------------------------------------------------------------- the input transformer

class Transformer:
    """Prepares H x W x K images for a net's input blobs: resize, transpose, channel swap, raw
    scale, mean, input scale, in that order (and the inverse in `deprocess`).

    inputs: {blob name: blob shape}, e.g. {"data": net.blobs["data"].data.shape}.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """A K x H x W float32 array for input `in_` from an H' x W' x K image."""
        self._check_input(in_)
        out = data.astype(np.float32, copy=False)
        size = tuple(self.inputs[in_][2:])
        if out.shape[:2] != size:
            out = resize_image(out, size)
        if self.transpose.get(in_) is not None:
            out = out.transpose(self.transpose[in_])
        if self.channel_swap.get(in_) is not None:
            out = out[self.channel_swap[in_], :, :]
        if self.raw_scale.get(in_) is not None:
            out *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            out -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            out *= self.input_scale[in_]
        return out

    def deprocess(self, in_, data):
        """The inverse of `preprocess` (without the resize)."""
        self._check_input(in_)
        out = data.copy().squeeze()
        if self.input_scale.get(in_) is not None:
            out /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            out += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            out /= self.raw_scale[in_]
        if self.channel_swap.get(in_) is not None:
            out = out[np.argsort(self.channel_swap[in_]), :, :]
        if self.transpose.get(in_) is not None:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out

    def set_transpose(self, in_, order):
        """The axis order, e.g. (2, 0, 1) turns H x W x K into K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as "
                            "the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The channel order after transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the "
                            "input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the raw input (before the mean), e.g. 255 for [0, 1] images."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (K,) or an image (K x H x W, resized to
        the input when its size differs)."""
        self._check_input(in_)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            if shape != tuple(self.inputs[in_][1:]):
                size = tuple(self.inputs[in_][2:])
                low, high = mean.min(), mean.max()
                unit = (mean - low) / (high - low)
                mean = resize_image(unit.transpose((1, 2, 0)), size).transpose((2, 0, 1)) * \
                    (high - low) + low
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "load_image",
           "resize_image", "oversample", "Transformer", "caffe_pb2"]
