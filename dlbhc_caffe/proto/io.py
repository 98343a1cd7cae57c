"""Read and write Caffe's artifacts: prototxt (text), caffemodel / solverstate / binaryproto
(binary), Datum records, and numpy <-> BlobProto.

Text or binary is chosen by the file's extension (`is_binary_path`). Every error names the file,
and for text the line, so a user can open the culprit. Writes are atomic: a temporary file in the
same folder, renamed over the target when complete, so an interrupted write never leaves half a
file behind.
"""
from pathlib import Path

import numpy as np
from google.protobuf import message as _message
from google.protobuf import text_format

from ..fileio import atomic_write_bytes
from . import dlbhc_caffe_pb2 as pb
from ..errors import DlbhcError

BINARY_SUFFIXES = {".caffemodel", ".solverstate", ".binaryproto", ".pb", ".bin"}


class ProtoError(DlbhcError):
    """A Caffe file that cannot be read or does not mean what it must."""


def is_binary_path(path):
    """True for Caffe's binary artifacts (.caffemodel, .solverstate, .binaryproto, .pb, .bin)."""
    return Path(path).suffix.lower() in BINARY_SUFFIXES


def _text_error(path, err):
    line = err.GetLine() if hasattr(err, "GetLine") else None
    where = f"{path}:{line}" if line else str(path)
    detail = str(err)
    # protobuf prefixes "line:col : "; the location is already in `where`.
    if line and ":" in detail:
        head, _, rest = detail.partition(" : ")
        if rest and head.replace(":", "").isdigit():
            detail = rest
    return ProtoError(f"{where}: {detail}")


def parse_text(text, message, path="<string>"):
    """Parse prototxt `text` (str or bytes) into `message` (an instance) as strictly as Caffe's
    TextFormat::Parse: a singular field given twice, message fields included, and NUL bytes are
    errors; bytes that are not UTF-8 are read in comments (Caffe skips them) and refused
    elsewhere. Errors name `path` and the line."""
    text = _decode_text(text, path)
    try:
        # Parse, not Merge: like Caffe's parser it refuses a singular field given twice.
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise _text_error(path, err) from None
    return message


def _decode_text(text, path):
    """Prototxt bytes as text: UTF-8, with any bytes allowed in comments."""
    if isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = bytes(text)
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ProtoError(f"{path}:{line}: a NUL byte (a binary file? Caffe refuses it too)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        code, comment = _split_comment(line)
        try:
            lines.append(code.decode("utf-8") + comment.decode("latin-1"))
        except UnicodeDecodeError:
            raise ProtoError(f"{path}:{number}: bytes that are not UTF-8 outside a comment; save "
                             f"the file as UTF-8") from None
    return "\n".join(lines)


def _split_comment(line):
    """(code, comment) of one prototxt line: the comment starts at a # outside a string."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i:i + 1]
        if quote:
            if c == b"\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in (b'"', b"'"):
            quote = c
        elif c == b"#":
            return line[:i], line[i:]
        i += 1
    return line, b""


def read_text(path, message_type):
    """Read a prototxt file as `message_type` (e.g. pb.NetParameter)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ProtoError(f"{path}: cannot read ({err.strerror})") from None
    return parse_text(data, message_type(), path)


def read_binary(path, message_type):
    """Read a binary protobuf file (caffemodel, solverstate, binaryproto) as `message_type`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ProtoError(f"{path}: cannot read ({err.strerror})") from None
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as err:
        raise ProtoError(f"{path}: not a binary {message_type.DESCRIPTOR.name} "
                         f"(truncated or corrupt: {err})") from None
    except UnicodeDecodeError as err:  # Caffe keeps such bytes; protobuf's Python cannot
        raise ProtoError(f"{path}: a text field of this {message_type.DESCRIPTOR.name} is not "
                         f"UTF-8 ({err.object[max(0, err.start - 20):err.end]!r}); this "
                         f"reader needs UTF-8 names") from None
    bad = _non_utf8_field(msg)
    if bad:
        raise ProtoError(f"{path}: field '{bad}' of this {message_type.DESCRIPTOR.name} is not "
                         f"UTF-8; this reader needs UTF-8 names")
    return msg


def _non_utf8_field(message, prefix=""):
    """The name of a text field protobuf's parser left as bytes (not UTF-8), or None."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            values = value if field.label == field.LABEL_REPEATED else [value]
            if any(isinstance(v, bytes) for v in values):
                return prefix + field.name
        elif field.message_type is not None:
            values = value if field.label == field.LABEL_REPEATED else [value]
            for item in values:
                found = _non_utf8_field(item, f"{prefix}{field.name}.")
                if found:
                    return found
    return None


def read_message(path, message_type):
    """Read `path` as text or binary by its extension."""
    reader = read_binary if is_binary_path(path) else read_text
    return reader(path, message_type)


def format_text(message):
    """Prototxt text of `message`, as Caffe writes it (fields in schema order)."""
    return text_format.MessageToString(message)


def write_text(message, path):
    """Write `message` as prototxt."""
    return atomic_write_bytes(path, format_text(message).encode())


def write_binary(message, path):
    """Write `message` in protobuf's binary wire format."""
    return atomic_write_bytes(path, message.SerializeToString())


def write_message(message, path):
    """Write `message` as text or binary by the extension of `path`."""
    writer = write_binary if is_binary_path(path) else write_text
    return writer(message, path)


# ---------------------------------------------------------------- blobs

def blob_shape(blob):
    """The shape of a BlobProto: its BlobShape, or the legacy num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return (len(blob.data) or len(blob.double_data),)


def check_blob_values(blob, where="blob"):
    """Raise ProtoError unless BlobProto `blob` holds as many values as its shape says, as
    Caffe's Blob::FromProto CHECKs (data exactly; diff, when present, exactly), with no negative
    dimension and at most INT_MAX values. `where` names the blob in the message."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ProtoError(f"{where}: shape {shape} has a negative dimension")
    count = int(np.prod(shape, dtype=object))
    if count > 2 ** 31 - 1:
        raise ProtoError(f"{where}: shape {shape} holds more than Caffe's {2 ** 31 - 1} values")
    data = len(blob.double_data) or len(blob.data)
    if data != count:
        raise ProtoError(f"{where}: shape {shape} needs {count} values, the file holds {data}")
    diff = len(blob.double_diff) or len(blob.diff)
    if diff and diff != count:
        raise ProtoError(f"{where}: shape {shape} needs {count} diff values, the file holds "
                         f"{diff}")


def blob_to_array(blob, diff=False):
    """A BlobProto's data (or diff) as a float32 (float64 for double blobs) numpy array."""
    shape = blob_shape(blob)
    single, double = (blob.diff, blob.double_diff) if diff else (blob.data, blob.double_data)
    if len(double) and not len(single):
        values = np.asarray(double, dtype=np.float64)
    else:
        values = np.asarray(single, dtype=np.float32)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise ProtoError(f"blob of shape {shape} holds {values.size} values")
    return values.reshape(shape)


def array_to_blob(array, diff=None, legacy_4d=False):
    """A BlobProto holding `array` (float32) and optionally `diff`.

    legacy_4d writes num/channels/height/width instead of BlobShape, as old binaryproto means
    (and the original's imagenet_mean.binaryproto) do; only for 4-D arrays.
    """
    array = np.asarray(array, dtype=np.float32)
    blob = pb.BlobProto()
    if legacy_4d:
        if array.ndim != 4:
            raise ValueError(f"legacy_4d needs a 4-D array, got shape {array.shape}")
        blob.num, blob.channels, blob.height, blob.width = array.shape
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


def read_blob(path):
    """Read a .binaryproto BlobProto (a mean file, say) as a numpy array."""
    blob = read_binary(path, pb.BlobProto)
    try:
        check_blob_values(blob, str(path))
        return blob_to_array(blob)
    except ProtoError as err:
        raise ProtoError(f"{path}: {err}") from None


def write_blob(array, path, legacy_4d=True):
    """Write a numpy array as a .binaryproto BlobProto (4-D legacy layout, as Caffe's means)."""
    array = np.asarray(array, dtype=np.float32)
    return write_binary(array_to_blob(array, legacy_4d=legacy_4d and array.ndim == 4), path)


def read_mean(path):
    """A mean file as C x H x W float32 (Caffe's means are 1 x C x H x W, BGR)."""
    mean = read_blob(path)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise ProtoError(f"{path}: a mean must be 1 x C x H x W, got shape {mean.shape}")
    return mean


# ---------------------------------------------------------------- Datum records

def datum_from_array(image, label=0):
    """A Datum of a C x H x W uint8 image (raw pixels, channel-major, as Caffe stores them)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"a raw Datum needs a C x H x W uint8 array, got {image.dtype} "
                         f"{image.shape}")
    c, h, w = image.shape
    return pb.Datum(channels=c, height=h, width=w, data=image.tobytes(), label=int(label))


def datum_to_array(datum):
    """A raw Datum's pixels as C x H x W (uint8, or float32 for float_data records)."""
    if datum.encoded:
        raise ProtoError("encoded Datum: decode it with dlbhc_caffe.datasets (needs Pillow)")
    shape = (datum.channels, datum.height, datum.width)
    if datum.data:
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
