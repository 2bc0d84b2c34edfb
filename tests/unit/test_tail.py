"""`sluice tail`'s SSE parsing (pure)."""

from __future__ import annotations

from sluice.client.tail import SSEEvent, parse_sse, sse_lines


def test_lines_end_only_at_cr_lf_or_crlf():
    chunks = [b"id: 1-0\r", b"\nevent: job:state_change\ndata: a\xe2\x80\xa8b\xc2", b"\x85c\n\n"]
    assert list(sse_lines(chunks)) == [
        "id: 1-0",
        "event: job:state_change",
        "data: a\u2028b\x85c",
        "",
    ]


def test_bare_cr_and_split_utf8():
    assert list(sse_lines([b"a\rb\r", b"\r\n", "é".encode()[:1], "é".encode()[1:]])) == [
        "a",
        "b",
        "",
        "é",
    ]


def test_events_with_unicode_line_separators_in_data_survive():
    body = 'id: 5-0\nevent: job:state_change\ndata: {"name":"x\u2028y\u0085z"}\n\n'.encode()
    events = list(parse_sse(sse_lines([body[:7], body[7:]])))
    assert events == [SSEEvent("5-0", "job:state_change", '{"name":"x\u2028y\u0085z"}')]


def test_an_empty_chunk_between_cr_and_lf_is_not_a_line():
    assert list(sse_lines([b"data: x\r", b"", b"\n\r\n"])) == ["data: x", ""]
