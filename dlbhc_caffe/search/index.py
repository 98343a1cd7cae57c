"""The index file: packed hash codes, fc7 features, ids, paths and labels, memory-mapped.

:class:`HashIndex` is :class:`~dlbhc_caffe.search.hashindex.HashIndexCore` (the in-memory index
and its Hamming search) with ``save`` and ``load``.

On disk (``.index``), little-endian::

    magic "DLBHCIDX" | uint32 version | uint32 header length | header (JSON) | sections

The JSON header gives bits, ntotal, the words per code, the fc7 width, whether labels are known,
free-form ``meta`` (the model that made the codes), and each section's offset and length; the
sections are codes (uint64 words, as :func:`dlbhc_caffe.hamming.pack_codes` packs them), ids
(int64), labels (int64), fc7 (float32 or float16 rows, the header's ``fc7_dtype``) and paths
(int64 offsets + UTF-8 bytes), each
64-byte aligned so that :meth:`HashIndex.load` memory-maps them read-only without copying. Loading
checks the magic, the version, and every section against the file's length: a truncated file is
an :class:`IndexFormatError` that says how many bytes are missing. Sections may lie apart (an index
built by streaming reserves room for every row it will hold, see
:mod:`dlbhc_caffe.search.builder`); a ``build`` entry in the header says how far such a build got.

>>> import numpy as np
>>> index = HashIndex(bits=4)
>>> index.add([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], labels=[0, 1, 0])
>>> distances, ids = index.search([[1, 0, 0, 1]], k=2)
>>> distances.tolist(), ids.tolist()
([[1, 2]], [[2, 0]])
"""
import json
import math
import numbers
from pathlib import Path

import numpy as np

from ..errors import DlbhcError
from ..fileio import atomic_path
from .hashindex import FC7_DTYPES, HashIndexCore

MAGIC = b"DLBHCIDX"
VERSION = 1
ALIGN = 64
_PREFIX = len(MAGIC) + 8  # magic, version, header length
# section name -> little-endian dtype
_DTYPES = {"codes": "<u8", "ids": "<i8", "labels": "<i8", "fc7": "<f4", "path_offsets": "<i8",
           "path_bytes": "u1"}


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class IndexFormatError(DlbhcError):
    """An index file that cannot be read: not an index, another version, or truncated."""


class HashIndex(HashIndexCore):
    """The index (see :class:`~dlbhc_caffe.search.hashindex.HashIndexCore`) with its file."""

    def save(self, path):
        """Write the index to ``path`` (whole or not at all: a temporary file, renamed)."""
        return save_index(self, path)

    @classmethod
    def load(cls, path, mmap=True):
        """Read an index file; ``mmap`` maps its sections read-only instead of reading them."""
        return load_index(path, mmap=mmap)


def aligned(offset):
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def dtypes(fc7_dtype="float32"):
    """Each section's little-endian dtype, fc7's as the header says."""
    kinds = dict(_DTYPES, fc7=FC7_DTYPES[fc7_dtype])
    return {name: np.dtype(kind) for name, kind in kinds.items()}


def header_of(index):
    """The JSON header of ``index``, without sections and sizes."""
    return {"format": "dlbhc-caffe hash index", "bits": index.bits, "ntotal": index.ntotal,
            "words": index.words, "fc7_dim": index.fc7_dim, "fc7_dtype": index.fc7_dtype,
            "labels": index.labels is not None, "meta": index.meta, "sections": {}}


def section_names(labels, fc7):
    """The sections an index file holds, in file order."""
    return (["codes", "ids"] + (["labels"] if labels else []) + (["fc7"] if fc7 else [])
            + ["path_offsets", "path_bytes"])


def _sections(index):
    arrays = {"codes": index.packed, "ids": index.ids, "labels": index.labels, "fc7": index.fc7,
              "path_offsets": index.path_offsets, "path_bytes": index.path_bytes}
    kinds = dtypes(index.fc7_dtype)
    return {name: np.ascontiguousarray(arrays[name], dtype=kinds[name])
            for name in section_names(index.labels is not None, index.fc7 is not None)}


def encode_header(header):
    """The file's first bytes: magic, version, header length, header."""
    body = json.dumps(header).encode()
    return MAGIC + np.array([VERSION, len(body)], "<u4").tobytes() + body


def save_index(index, path):
    """Write ``index`` to ``path`` atomically; returns the path."""
    path = Path(path)
    arrays = _sections(index)
    header = header_of(index)
    # The header holds the offsets, which depend on the header's length: place the sections after
    # a header padded to a generous fixed size, then fill in the numbers.
    body = json.dumps(header).encode()
    reserve = aligned(_PREFIX + len(body) + 64 * (len(arrays) + 2) + 64)
    offset = reserve
    for name, array in arrays.items():
        header["sections"][name] = [offset, int(array.nbytes)]
        offset = aligned(offset + array.nbytes)
    header["file_size"] = offset
    prefix = encode_header(header)
    if len(prefix) > reserve:  # cannot happen: the reserve covers every number we add
        raise AssertionError("index header outgrew its reserve")
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(prefix)
        for name, array in arrays.items():
            start = header["sections"][name][0]
            out.write(b"\0" * (start - out.tell()))
            if array.nbytes:
                out.write(memoryview(array).cast("B"))
        out.write(b"\0" * (offset - out.tell()))
    return path


def _read_header(path, size):
    if size < _PREFIX:
        raise IndexFormatError(f"{path}: {size} bytes is too short for a hash index "
                               f"(truncated or not an index)")
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX)
        if prefix[:len(MAGIC)] != MAGIC:
            raise IndexFormatError(f"{path}: not a dlbhc-caffe hash index (starts with "
                                   f"{prefix[:len(MAGIC)]!r}, expected {MAGIC!r})")
        version, length = np.frombuffer(prefix[len(MAGIC):], "<u4")
        if version != VERSION:
            raise IndexFormatError(f"{path}: index format version {version}; this dlbhc-caffe "
                                   f"reads version {VERSION}"
                                   + (" (rebuild the index, or upgrade dlbhc-caffe)"
                                      if version > VERSION else ""))
        if _PREFIX + int(length) > size:
            raise IndexFormatError(f"{path}: truncated: the file is {size} bytes, its header "
                                   f"alone needs {_PREFIX + int(length)}")
        try:
            header = json.loads(f.read(int(length)).decode())
        except (ValueError, RecursionError) as err:
            raise IndexFormatError(f"{path}: corrupt header ({err})") from None
    return header


def read_header(path):
    """The JSON header of the index file at ``path`` (magic and version checked)."""
    return _read_header(Path(path), Path(path).stat().st_size)


def load_index(path, mmap=True):
    """Read a hash index written by :meth:`HashIndex.save`.

    With ``mmap`` (the default) the sections are memory-mapped read-only (the index can still be
    added to: that copies into memory). Raises FileNotFoundError for a missing file and
    :class:`IndexFormatError` for anything else wrong with it, truncation included.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    size = path.stat().st_size
    header = _read_header(path, size)
    bits, ntotal, words, sections, fc7_dim, expected_size = check_header(path, header)
    if header.get("fc7_dtype", "float32") not in FC7_DTYPES:
        raise IndexFormatError(f"{path}: header field 'fc7_dtype' must be one of "
                               f"{', '.join(FC7_DTYPES)}, got {header.get('fc7_dtype')!r}")
    kinds = dtypes(header.get("fc7_dtype", "float32"))
    if expected_size > size:
        raise IndexFormatError(f"{path}: truncated: the file is {size} bytes, its header says "
                               f"{expected_size} ({expected_size - size} missing)")
    if expected_size != size:
        raise IndexFormatError(f"{path}: the file is {size} bytes, its header says "
                               f"{expected_size} (trailing data: corrupt)")
    shapes = {"codes": (ntotal, words), "ids": (ntotal,), "labels": (ntotal,),
              "fc7": (ntotal, fc7_dim or 0), "path_offsets": (ntotal + 1,)}
    arrays = {}
    for name, (offset, nbytes) in sections.items():
        if name not in kinds:
            raise IndexFormatError(f"{path}: unknown section '{name}'")
        dtype = np.dtype(kinds[name])
        shape = shapes.get(name, (nbytes // dtype.itemsize,))
        want = math.prod(shape) * dtype.itemsize
        if nbytes != want or offset < _PREFIX or offset + nbytes > size:
            raise IndexFormatError(f"{path}: section '{name}' ({nbytes} bytes at {offset}) does "
                                   f"not fit {ntotal} items or the file's {size} bytes")
        if want == 0:
            arrays[name] = np.zeros(shape, dtype)
        elif mmap:
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                arrays[name] = np.frombuffer(f.read(nbytes), dtype).reshape(shape)
    for name in ("codes", "ids", "path_offsets", "path_bytes"):
        if name not in arrays:
            raise IndexFormatError(f"{path}: section '{name}' is missing")
    check_sections(path, bits, arrays)
    offsets = arrays["path_offsets"]
    index = HashIndex(bits, meta=header.get("meta"), fc7_dtype=kinds["fc7"].name)
    index.adopt(arrays["codes"], arrays["ids"], arrays.get("labels"), arrays.get("fc7"),
                offsets, arrays["path_bytes"])
    index.path = path
    index.build = header.get("build")
    return index


# The loader's checks of a file's header and sections (they raise this module's IndexFormatError).
from .index_check import check_header, check_sections  # noqa: E402
