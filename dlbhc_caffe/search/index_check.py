"""What the index loader checks before it trusts a file: the header's JSON fields have their
types and ranges (no TypeError or OverflowError from a crafted header), and the sections agree
(path offsets increase from 0 to the path bytes' length and split no UTF-8 character, no code
has a bit set above `bits`, ids are unique), so a corrupt or crafted index is an
IndexFormatError naming the file instead of silently wrong results.
"""
import numpy as np

from .index import IndexFormatError, _is_int


def check_header(path, header):
    """(bits, ntotal, words, sections, fc7_dim, file_size) of a parsed index header, each of the
    JSON type and range it must have; raises IndexFormatError naming the field."""
    if not isinstance(header, dict):
        raise IndexFormatError(f"{path}: the header is not a JSON object (corrupt)")

    def integer(name, low=0, value=None, optional=False):
        value = header.get(name) if value is None else value
        if value is None and optional:
            return None
        if not _is_int(value) or not low <= value < 2 ** 62:
            raise IndexFormatError(f"{path}: header field '{name}' must be an integer >= {low}, "
                                   f"got {value!r} (corrupt)")
        return int(value)

    for name in ("bits", "ntotal", "words", "file_size", "sections"):
        if name not in header:
            raise IndexFormatError(f"{path}: header lacks '{name}' (corrupt)")
    bits, ntotal, words = integer("bits", 1), integer("ntotal"), integer("words", 1)
    fc7_dim = integer("fc7_dim", 1, optional=True)
    if not isinstance(header.get("labels", False), bool):
        raise IndexFormatError(f"{path}: header field 'labels' must be true or false")
    if not isinstance(header.get("meta") or {}, dict):
        raise IndexFormatError(f"{path}: header field 'meta' must be a JSON object")
    if not isinstance(header["sections"], dict):
        raise IndexFormatError(f"{path}: header field 'sections' must be a JSON object")
    sections = {}
    for name, where in header["sections"].items():
        if not isinstance(where, list) or len(where) != 2:
            raise IndexFormatError(f"{path}: section '{name}' must be [offset, length]")
        sections[name] = (integer(f"sections.{name}", value=where[0]),
                          integer(f"sections.{name}", value=where[1]))
    if words != (bits + 63) // 64:
        raise IndexFormatError(f"{path}: {words} words per code cannot hold {bits} bits")
    return bits, ntotal, words, sections, fc7_dim, integer("file_size")


def check_sections(path, bits, arrays):
    """Raise IndexFormatError unless the loaded sections agree: path offsets start at 0, never
    decrease and end at the path bytes' length; no code has a bit set above `bits`; ids are
    unique."""
    offsets = arrays["path_offsets"]
    if offsets[0] != 0 or offsets[-1] != arrays["path_bytes"].shape[0] or \
            np.any(np.diff(offsets) < 0):
        raise IndexFormatError(f"{path}: the path table's offsets are not increasing from 0 to "
                               f"its length (corrupt)")
    codes = arrays["codes"]
    if bits % 64 and codes.shape[0]:
        above = np.uint64(~((1 << (bits % 64)) - 1) & (2 ** 64 - 1))
        bad = np.flatnonzero(codes[:, -1] & above)
        if bad.size:
            raise IndexFormatError(f"{path}: code of row {int(bad[0])} has bits set above its "
                                   f"{bits} bits (corrupt)")
    ids = np.sort(arrays["ids"], kind="stable")
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.size:
        raise IndexFormatError(f"{path}: id {int(repeated[0])} appears more than once (corrupt)")
    data = arrays["path_bytes"]
    starts = offsets[:-1][offsets[:-1] < data.shape[0]]
    if np.any((data[starts] & 0xC0) == 0x80):  # a path starting inside a UTF-8 character
        raise IndexFormatError(f"{path}: a path offset splits a UTF-8 character (corrupt)")
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise IndexFormatError(f"{path}: the paths are not UTF-8 at byte {err.start} "
                               f"(corrupt)") from None
