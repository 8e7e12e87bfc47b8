"""The incremental SSE parser."""

from __future__ import annotations

from collections.abc import AsyncIterator

from adapters.sse import SSEEvent, iter_sse


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _parse(*lines: str) -> list[SSEEvent]:
    return [event async for event in iter_sse(_lines(*lines))]


async def test_named_event_with_data_dispatches_on_blank_line() -> None:
    events = await _parse("event: message_stop", 'data: {"type":"message_stop"}', "")
    assert events == [SSEEvent("message_stop", '{"type":"message_stop"}')]


async def test_unnamed_event_is_a_message_and_multi_line_data_joins_with_newlines() -> None:
    assert await _parse("data: a", "data:b", "data:  c", "") == [SSEEvent("message", "a\nb\n c")]


async def test_comments_and_unknown_fields_are_ignored() -> None:
    events = await _parse(": keep-alive", "retry: 100", "foo: bar", "data: x", "")
    assert events == [SSEEvent("message", "x")]


async def test_blank_lines_without_data_dispatch_nothing_and_reset_the_event_name() -> None:
    events = await _parse("event: ping", "", "data: y", "")
    assert events == [SSEEvent("message", "y")]


async def test_an_event_cut_before_its_blank_line_is_dropped() -> None:
    assert await _parse("data: whole", "", 'data: {"half') == [SSEEvent("message", "whole")]


async def test_the_last_event_id_is_carried() -> None:
    events = await _parse("id: 7", "data: a", "", "data: b", "")
    assert [e.id for e in events] == ["7", "7"]
