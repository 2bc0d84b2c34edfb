"""The one body parser (pure: no Redis, no server)."""

from __future__ import annotations

import json

import pytest

from sluice.strictjson import MAX_DEPTH, MAX_INT_DIGITS, JsonError, parse, too_deep


@pytest.mark.parametrize(
    "raw, value",
    [
        (b'{"a": 1}', {"a": 1}),
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a valid surrogate pair
        (b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', {"a": "[" * 40}),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, json.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)),
        (b'{"a": -0.5e3, "b": 1E+2}', {"a": -500.0, "b": 100.0}),
        (b'{"a": ' + b"9" * MAX_INT_DIGITS + b"}", {"a": int("9" * MAX_INT_DIGITS)}),
        ('{"a": "é\u2028"}'.encode(), {"a": "é\u2028"}),
    ],
)
def test_accepts_strict_json(raw, value):
    assert parse(raw) == value


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested"),
        (b"[" * 100_000, "nested"),
        (b'{"a": ' + b'{"k": ' * 5000 + b"1" + b"}" * 5000 + b"}", "nested"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": "\\uDFFF"}', "surrogate"),
        (b'{"a": "\\udc00\\ud800"}', "surrogate"),  # reversed pair
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": -1e400}', "out of range"),
        (b'{"a": ' + b"9" * (MAX_INT_DIGITS + 1) + b"}", "digits"),
        (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded as UTF-8 bytes
        (b'{"a": "\xff"}', "UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"{'a': 1}", "Expecting"),
        (b"", "Expecting"),
    ],
)
def test_refuses_with_a_reason(raw, reason):
    with pytest.raises(JsonError) as caught:
        parse(raw)
    assert reason in caught.value.reason


def test_too_deep_counts_arrays_and_objects():
    value: object = 1
    for level in range(1, 40):
        value = [value] if level % 2 else {"k": value}
        assert too_deep(value, 32) is (level > 32)
