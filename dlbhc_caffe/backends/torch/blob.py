"""Blob: Caffe's data + diff pair, held as torch tensors and shown to Python as numpy arrays.

pycaffe hands out `blob.data` and `blob.diff` as writable numpy arrays over the blob's memory,
and the next forward sees what was written into them. Here a blob keeps its tensors on the net's
device. On the CPU, `data` and `diff` are numpy views of those tensors (no copy). On a GPU, they
are host mirrors, synchronised the way Caffe's SyncedMemory does it: reading `data` copies the
device tensor to the host once and marks the host copy as the newest; the next device-side use
copies it back.

Also here: fast BlobProto <-> numpy conversion for large caffemodels (the protobuf runtime's
element-by-element repeated-field access takes seconds for the 58 million weights of KevinNet).
"""
import numpy as np
import torch

from ...proto import ProtoError, blob_shape, blob_to_array

_DEVICE, _HOST = "device", "host"


class _Side:
    """One of a blob's two arrays (data or diff) with its host mirror."""

    __slots__ = ("tensor", "host", "head")

    def __init__(self, tensor):
        self.tensor = tensor
        self.host = None
        self.head = _DEVICE

    def for_device(self):
        if self.head == _HOST:
            self.tensor = torch.from_numpy(self.host).to(self.tensor.device)
            self.head = _DEVICE
        return self.tensor

    def for_host(self):
        if self.tensor.device.type == "cpu":
            return self.tensor.numpy()
        if self.head == _DEVICE:
            self.host = self.tensor.detach().cpu().numpy()
            self.head = _HOST
        return self.host

    def set(self, tensor):
        self.tensor = tensor
        self.host = None
        self.head = _DEVICE


def _as_blob_tensor(tensor):
    tensor = tensor.detach()
    if tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor if tensor.is_contiguous() else tensor.contiguous()


class Blob:
    """A named array of the net (an activation or a learnable parameter), pycaffe-shaped.

    >>> b = Blob.zeros((2, 3))
    >>> b.data[...] = 1.5
    >>> float(b.tensor().sum()), b.shape, b.count
    (9.0, (2, 3), 6)
    """

    def __init__(self, tensor):
        self._data = _Side(_as_blob_tensor(tensor))
        self._diff = None

    @classmethod
    def zeros(cls, shape, device="cpu"):
        return cls(torch.zeros(tuple(int(d) for d in shape), dtype=torch.float32, device=device))

    # ---- pycaffe surface
    @property
    def data(self):
        """The values, as a writable float32 numpy array (writes reach the next forward)."""
        return self._data.for_host()

    @property
    def diff(self):
        """The gradient, as a writable float32 numpy array."""
        return self._diff_side().for_host()

    @property
    def shape(self):
        return tuple(self._data.tensor.shape)

    @property
    def count(self):
        return int(self._data.tensor.numel())

    def _legacy(self, index):
        # Caffe's LegacyShape: axes counted from the front, 1 past the last axis.
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"a blob of shape {shape} has no legacy 4-D accessor")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        """Give the blob a new shape (pycaffe's `blob.reshape(n, c, h, w)`); values are reset
        to zero when the shape changes. Call `net.reshape()` afterwards to propagate it."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob shape must be non-negative, got {shape}")
        if shape != self.shape:
            device = self._data.tensor.device
            self._data.set(torch.zeros(shape, dtype=torch.float32, device=device))
            self._diff = None

    def __repr__(self):
        return f"Blob(shape={self.shape}, device={self.device})"

    # ---- engine side
    @property
    def device(self):
        return self._data.tensor.device

    def tensor(self):
        """The data tensor on the device (after any host-side writes)."""
        return self._data.for_device()

    def set_tensor(self, tensor):
        self._data.set(_as_blob_tensor(tensor))

    def _diff_side(self):
        if self._diff is None or tuple(self._diff.tensor.shape) != self.shape:
            self._diff = _Side(torch.zeros(self.shape, dtype=torch.float32, device=self.device))
        return self._diff

    def has_diff(self):
        """True when a diff of the blob's current shape exists."""
        return self._diff is not None and tuple(self._diff.tensor.shape) == self.shape

    def share_data(self, other):
        """Use `other`'s data (the same memory, now and after updates); diffs stay apart."""
        self._data = other._data

    def diff_tensor(self):
        """The diff tensor on the device (zeros until written)."""
        return self._diff_side().for_device()

    def set_diff(self, tensor):
        self._diff_side().set(_as_blob_tensor(tensor))

    def fill_diff(self, value):
        self._diff_side().set(torch.full(self.shape, float(value), dtype=torch.float32,
                                         device=self.device))

    def copy_(self, values):
        """Overwrite the data in place (keeps the tensor, so views and sharers see it)."""
        values = torch.as_tensor(np.asarray(values, dtype=np.float32) if not
                                 isinstance(values, torch.Tensor) else values)
        target = self.tensor()
        with torch.no_grad():
            target.copy_(values.reshape(target.shape))

    # ---- protobuf
    def to_proto_bytes(self, write_diff=False):
        """This blob as a serialized BlobProto (shape + float data, and diff if asked)."""
        data = self.tensor().detach().cpu().numpy()
        diff = self.diff_tensor().detach().cpu().numpy() if write_diff else None
        return encode_blob(data, diff)


# ---------------------------------------------------------------- BlobProto wire format

def _varint(value):
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_blob(data, diff=None):
    """A serialized BlobProto with BlobShape `data.shape`, packed float data (and diff)."""
    data = np.asarray(data, dtype="<f4", order="C")  # (ascontiguousarray makes 0-d 1-d)
    dims = b"".join(_varint(int(d)) for d in data.shape)
    out = [_field(7, _field(1, dims) if data.shape else b"")]
    if data.size:
        out.append(_field(5, data.tobytes()))
    if diff is not None:
        diff = np.asarray(diff, dtype="<f4", order="C")
        if diff.shape != data.shape:
            raise ValueError(f"diff shape {diff.shape} differs from data shape {data.shape}")
        if diff.size:
            out.append(_field(6, diff.tobytes()))
    return b"".join(out)


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _packed_values(raw, want_diff):
    """The packed float data (or diff) of a serialized BlobProto, or None if the blob uses a
    layout this fast path leaves to protobuf (unpacked floats, doubles)."""
    view = memoryview(raw)
    pos, values = 0, np.zeros(0, np.float32)
    key = 6 if want_diff else 5
    while pos < len(raw):
        tag, pos = _read_varint(raw, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _read_varint(raw, pos)
        elif wire == 2:
            length, pos = _read_varint(raw, pos)
            if number == key:
                values = np.frombuffer(view[pos:pos + length], dtype="<f4")
            elif number in (8, 9):
                return None
            pos += length
        elif wire == 5:
            if number in (5, 6):
                return None
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            return None
    return values


def proto_shape(blob):
    """(shape, is_legacy) of a BlobProto message."""
    legacy = not blob.HasField("shape") and any(
        blob.HasField(f) for f in ("num", "channels", "height", "width"))
    return blob_shape(blob), legacy


def decode_blob(blob, diff=False):
    """A BlobProto message's data (or diff) as float32 numpy, fast for large blobs."""
    values = _packed_values(blob.SerializeToString(), diff)
    if values is None:
        return blob_to_array(blob, diff=diff).astype(np.float32)
    shape = blob_shape(blob)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        if values.size == 0 and diff:
            return np.zeros(shape, np.float32)
        raise ProtoError(f"blob of shape {shape} holds {values.size} values")
    return values.astype(np.float32).reshape(shape)


def shapes_match(target_shape, blob):
    """Caffe's Blob::ShapeEquals: a legacy 4-D BlobProto matches a blob whose shape, padded with
    leading 1s to 4 axes, is the same."""
    shape, legacy = proto_shape(blob)
    target_shape = tuple(target_shape)
    if legacy:
        if len(target_shape) > 4:
            return False
        return (1,) * (4 - len(target_shape)) + target_shape == shape
    return target_shape == shape


__all__ = ["Blob", "encode_blob", "decode_blob", "shapes_match", "proto_shape"]
