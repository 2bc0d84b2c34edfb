"""The one JSON parser for request bodies (strict RFC 8259, bounded) and the one
compact encoder for what is stored and sent. Pure.

Every JSON body the service accepts goes through `parse`. It refuses what
Python's `json` module lets through but a browser's `JSON.parse` (or Redis,
or our own encoder) would choke on later:

- bytes that are not UTF-8 (a BOM included), and lone UTF-16 surrogates
  written as escapes (``"\\ud800"``): these cannot be encoded back to UTF-8;
- ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a double
  (``1e999``): not JSON, and the browser drops the whole event;
- integers of more than `MAX_INT_DIGITS` digits;
- nesting deeper than `MAX_DEPTH` arrays/objects (Python's C parser stops
  at its recursion limit with `RecursionError`, caught here; what it parsed
  is then measured without recursion).

No Flask, no Redis: the web layer maps `JsonError` to a 400.

Both directions go through orjson first (the ingest path parses and encodes
every event; orjson does each several times faster than `json`, measured in
`bench/`); whatever orjson refuses, or might read differently from `json`
(an integer outside [-2**63, 2**64), which orjson reads as a float),
goes the `json` way, so the accepted values and the reasons given for a
refusal are those of `json` with the checks above. Encoded numbers are
orjson's: the shortest form that reads back as the same double, with
exponents written `1e-7` and `1e16` (`json` writes `1e-07`, `1e+16`); both
read back as the same number everywhere.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

#: Arrays/objects inside one another, the body's own braces included.
MAX_DEPTH = 32
#: Digits of an integer literal (a JavaScript number is exact to 2^53 ≈ 16 digits).
MAX_INT_DIGITS = 64

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)
#: orjson reads an integer outside [-2**63, 2**64) as a float, `json` as an
#: integer: a body whose value holds a float this large takes the `json` way.
_INEXACT = float(2**63)
#: What `_walk` finds (0: neither).
_TOO_DEEP, _LARGE_FLOAT = 1, 2


class JsonError(ValueError):
    """The body is not acceptable JSON; `reason` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise JsonError(f"{name} is not valid JSON (RFC 8259)")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"number {text[:40]} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonError(f"integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_reject_constant
)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays/objects nest more than `limit` levels in a parsed value
    (iterative: safe for any depth; about 1.5 µs per ingested event)."""
    return _walk(value, limit) == _TOO_DEEP


def _walk(value: Any, limit: int) -> int:
    """`_TOO_DEEP` if arrays/objects nest more than `limit` levels, else
    `_LARGE_FLOAT` if a number is a float of magnitude 2**63 or more, else 0."""
    found = 0
    if type(value) is float and abs(value) >= _INEXACT:
        found = _LARGE_FLOAT
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        if level > limit:
            return _TOO_DEEP
        kind = type(node)
        children = node.values() if kind is dict else node if kind is list else ()
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, level + 1))
            elif kind is float and (child >= _INEXACT or child <= -_INEXACT):
                found = _LARGE_FLOAT
    return found


def parse(raw: bytes) -> Any:
    """The JSON value of `raw`, or `JsonError` saying what is wrong with it."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _parse_slowly(raw)  # which says why, in its words
    found = _walk(value, MAX_DEPTH)
    if found == _TOO_DEEP:
        raise JsonError(f"nested more than {MAX_DEPTH} levels deep")
    if found == _LARGE_FLOAT:
        return _parse_slowly(raw)  # maybe an integer past 64 bits: exact there
    return value


def _parse_slowly(raw: bytes) -> Any:
    """`parse` with the standard library's parser and the checks it needs."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"not UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise JsonError("a byte order mark is not allowed")
    try:
        value = _decoder.decode(text)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise JsonError(str(exc)[:200]) from None
    if too_deep(value):
        raise JsonError(f"nested more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(raw):
        # A valid pair was joined into one character by the parser; a lone
        # surrogate survives and cannot be encoded back to UTF-8.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonError("a string holds a lone UTF-16 surrogate") from None
    return value


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(data: Any) -> str:
    """Compact JSON, the form stored in entries and sent in frames: UTF-8 text
    as it is (no ``\\u`` escapes but those JSON requires), no spaces.

    orjson, or (for what it cannot encode: integers past 64 bits, keys that are
    not strings) one `json` encoder for the process (`json.dumps` with these
    options builds a new JSONEncoder on every call).
    """
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return str(_encode(data))
