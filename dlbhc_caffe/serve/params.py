"""What a request may ask, checked: every bad value is a :class:`ServeError` with an HTTP status
and one line naming the field, so the service answers 4xx and carries on.

>>> parse_bool("fine", "on"), parse_int("k", " 10 ")
(True, 10)
>>> parse_code("a5", bits=8)
[1, 0, 1, 0, 0, 1, 0, 1]
>>> try:
...     parse_int("k", "ten")
... except ServeError as err:
...     print(err.status, err)
400 k: expected an integer, got 'ten'
"""
import re

from ..errors import DlbhcError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_INT = re.compile(r"[+-]?\d{1,19}")
MAX_TEXT = 64  # longest echo of a bad value in a message


class ServeError(DlbhcError):
    """A request the service refuses; ``status`` is its HTTP status (400, 404, 413, 415...)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _shown(value):
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def parse_int(name, value):
    """An integer given as text (a query or form value) or as a JSON number."""
    if isinstance(value, bool):
        raise ServeError(f"{name}: expected an integer, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise ServeError(f"{name}: expected an integer, got {_shown(value)}")


def parse_bool(name, value):
    """true/false, 1/0, yes/no, on/off (text or JSON)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ServeError(f"{name}: expected true or false, got {_shown(value)}")


def parse_code(text, bits):
    """A query code as 0/1 values: ``bits`` characters of 0 and 1, or hex digits (first bit =
    the most significant bit of the first digit; the padding bits of the last digit must be 0)."""
    if not isinstance(text, str):
        raise ServeError(f"code: expected a string of bits or hex digits, got {_shown(text)}")
    text = text.strip().lower().removeprefix("0x")
    if len(text) == bits and set(text) <= {"0", "1"}:
        return [int(c) for c in text]
    digits = (bits + 3) // 4
    if len(text) == digits and re.fullmatch(r"[0-9a-f]+", text):
        values = [int(b) for c in text for b in format(int(c, 16), "04b")]
        if any(values[bits:]):
            raise ServeError(f"code: {_shown(text)} sets bits past the code's {bits}")
        return values[:bits]
    raise ServeError(f"code: expected {bits} bits (0/1) or {digits} hex digits, got "
                     f"{_shown(text)}")


def format_code(bits):
    """0/1 values as a bit string and as hex (the inverse of :func:`parse_code`).

    >>> format_code([1, 0, 1, 0, 0, 1, 0, 1, 1])
    ('101001011', 'a58')
    """
    text = "".join(str(int(b)) for b in bits)
    padded = text + "0" * (-len(text) % 4)
    return text, "".join(format(int(padded[i:i + 4], 2), "x") for i in range(0, len(padded), 4))


def search_options(values, ntotal, bits, max_k, default_radius):
    """(k, fine, radius) of a request's ``k``, ``fine``, ``radius`` values (absent: 10, False,
    the default radius), each checked against the index: 1 <= k <= min(ntotal, max_k),
    0 <= radius <= bits."""
    k = parse_int("k", values.get("k", 10))
    top = min(ntotal, max_k)
    if not 1 <= k <= top:
        raise ServeError(f"k: {k} is out of range: ask for 1 to {top} results (the index holds "
                         f"{ntotal} images, the service returns at most {max_k})")
    fine = parse_bool("fine", values.get("fine", False))
    radius = values.get("radius")
    radius = default_radius if radius in (None, "") else parse_int("radius", radius)
    if not 0 <= radius <= bits:
        raise ServeError(f"radius: {radius} is out of range: a Hamming radius is 0 to {bits} "
                         f"for {bits}-bit codes")
    return k, fine, radius


KNOWN_FIELDS = {"k", "fine", "radius", "id", "code", "image"}


def check_fields(values):
    """Refuse fields the API does not know (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(values) - KNOWN_FIELDS)
    if unknown:
        raise ServeError(f"unknown field(s) {', '.join(map(_shown, unknown))}: the search takes "
                         f"{', '.join(sorted(KNOWN_FIELDS))}")
