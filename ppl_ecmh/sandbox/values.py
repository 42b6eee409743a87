"""Plain data across the sandbox's boundary: a JSON encoding of Python's builtin values, exact types only.

The confined program's outputs and the test's inputs cross between processes in this form. Only
`None`, `bool`, `int`, `float`, `complex`, `str`, `bytes`, `list`, `tuple`, `dict`, `set` and
`frozenset` encode, matched by exact type (`type(x) is int`, never `isinstance`), so a subclass or
an object with a custom `__eq__` cannot cross: encoding it raises `Unencodable`. Floats keep their
bits (JSON writes `repr`, and `NaN`/`Infinity` stand for themselves); a tuple stays a tuple.

Standard library only: the confined harness loads this file by path, before its file system closes.
"""

import json

MAX_DEPTH = 64  # nesting: deeper values are refused rather than recursed into
_TAGS = ("tuple", "dict", "set", "frozenset", "bytes", "complex")


class Unencodable(ValueError):
    """A value that is not plain builtin data (or nests deeper than MAX_DEPTH)."""


def encode(value) -> str:
    return json.dumps(to_plain(value, 0), allow_nan=True, separators=(",", ":"))


def decode(text: str):
    return from_plain(json.loads(text), 0)


def to_plain(value, depth):
    """The JSON-ready form of `value`: scalars as themselves, lists as arrays, every other
    container as a one-key object naming its type."""
    if depth > MAX_DEPTH:
        raise Unencodable(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [to_plain(item, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        items = sorted(value, key=repr) if kind is not tuple else value
        return {kind.__name__: [to_plain(item, depth + 1) for item in items]}
    if kind is dict:
        return {"dict": [[to_plain(key, depth + 1), to_plain(item, depth + 1)] for key, item in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise Unencodable(f"a {kind.__name__} is not plain data")


def from_plain(data, depth):
    """Inverse of `to_plain`. Raises `Unencodable` on anything `to_plain` would not have written."""
    if depth > MAX_DEPTH:
        raise Unencodable(f"nested deeper than {MAX_DEPTH}")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [from_plain(item, depth + 1) for item in data]
    if type(data) is not dict or len(data) != 1 or next(iter(data)) not in _TAGS:
        raise Unencodable(f"not an encoded value: {str(data)[:80]}")
    (tag, body), = data.items()
    try:
        if tag == "bytes":
            return bytes.fromhex(body)
        if tag == "complex":
            real, imag = body
            if type(real) is not float or type(imag) is not float:
                raise Unencodable("a complex number is two floats")
            return complex(real, imag)
        items = [from_plain(item, depth + 1) for item in body]
        if tag == "dict":
            return {key: item for key, item in items}
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    except (TypeError, ValueError) as error:  # unhashable keys, malformed pairs, odd hex
        raise Unencodable(f"malformed {tag}: {error}") from None
