"""The incremental SSE parser over bytes."""

from __future__ import annotations

from adapters.sse import SSEEvent, SSEParser


def _parse(*reads: bytes) -> list[list[SSEEvent]]:
    parser = SSEParser()
    return [parser.feed(read) for read in reads]


def test_named_event_with_data_dispatches_on_blank_line() -> None:
    [events] = _parse(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert events == [SSEEvent("message_stop", b'{"type":"message_stop"}')]


def test_unnamed_event_is_a_message_and_multi_line_data_joins_with_newlines() -> None:
    [events] = _parse(b"data: a\ndata:b\ndata:  c\n\n")
    assert events == [SSEEvent("message", b"a\nb\n c")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    [events] = _parse(b": keep-alive\nretry: 100\nfoo: bar\ndata: x\n\n")
    assert events == [SSEEvent("message", b"x")]


def test_blank_lines_without_data_dispatch_nothing_and_reset_the_event_name() -> None:
    [events] = _parse(b"event: ping\n\ndata: y\n\n\n\n")
    assert events == [SSEEvent("message", b"y")]


def test_an_event_cut_before_its_blank_line_is_held_and_never_dispatched() -> None:
    assert _parse(b'data: whole\n\ndata: {"half') == [[SSEEvent("message", b"whole")]]


def test_the_last_event_id_is_carried() -> None:
    [events] = _parse(b"id: 7\ndata: a\n\ndata: b\n\n")
    assert [e.id for e in events] == ["7", "7"]


def test_every_event_one_read_delivers_comes_back_from_that_one_feed() -> None:
    burst = b"".join(b"data: %d\n\n" % i for i in range(50))
    [events] = _parse(burst)
    assert [e.data for e in events] == [b"%d" % i for i in range(50)]


def test_an_event_split_across_reads_completes_on_the_read_that_ends_it() -> None:
    assert _parse(b"da", b'ta: {"a"', b":1}\n", b"\ndata: 2\n\n") == [
        [],
        [],
        [],
        [SSEEvent("message", b'{"a":1}'), SSEEvent("message", b"2")],
    ]


def test_crlf_and_cr_line_ends_including_a_crlf_split_between_reads() -> None:
    assert _parse(b"data: a\r\n\r", b"\ndata: b\r\rdata: c\n\n") == [
        [SSEEvent("message", b"a")],
        [SSEEvent("message", b"b"), SSEEvent("message", b"c")],
    ]


def test_multibyte_utf8_split_across_reads_arrives_whole() -> None:
    text = "héllo ✓".encode()
    [first, second] = _parse(b"data: " + text[:2], text[2:] + b"\n\n")
    assert first == []
    assert second[0].data.decode() == "héllo ✓"
