"""The one body parser (pure: no Redis, no server)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.strictjson import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    JsonError,
    _parse_slowly,
    dumps,
    parse,
    too_deep,
)


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


# -- orjson first, json for the rest: one behaviour --------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_json_values)
def test_the_fast_path_reads_what_json_reads(value):
    raw = json.dumps(value).encode()  # ASCII escapes, spaces, long integers
    assert parse(raw) == _parse_slowly(raw) == value
    assert parse(dumps(value).encode()) == value


@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_what_one_path_refuses_the_other_refuses_with_the_same_reason(raw):
    try:
        slow = _parse_slowly(raw)
    except JsonError as exc:
        with pytest.raises(JsonError) as fast:
            parse(raw)
        assert fast.value.reason == exc.reason
    else:
        assert parse(raw) == slow


def test_long_integers_stay_exact_integers():
    # orjson would read these as floats; they take the json way.
    assert parse(b"[18446744073709551616, -9223372036854775809]") == [2**64, -(2**63) - 1]


@pytest.mark.parametrize(
    "value, encoded",
    [
        ({"a": [1, None, True], "é": "\u2028"}, '{"a":[1,null,true],"é":"\u2028"}'),
        ([1e-7, 1e16, 0.1, -0.0, 1.5], "[1e-7,1e16,0.1,-0.0,1.5]"),
        ([2**64, -(2**70)], "[18446744073709551616,-1180591620717411303424]"),  # json's way
        ({1: "x"}, '{"1":"x"}'),  # json's way: a key that is not a string
        ('a"\\\n\x00', '"a\\"\\\\\\n\\u0000"'),
    ],
)
def test_dumps_is_compact_utf8_json(value, encoded):
    assert dumps(value) == encoded
