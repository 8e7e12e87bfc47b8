"""The simulated provider honours `stop` as a model does: output ends before the sequence."""

from __future__ import annotations

from adapters.config import SimulatedConfig
from adapters.deadline import Deadline
from adapters.simulated import SimulatedBackend
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2

SIM = SimulatedConfig(kind="simulated", ttft_ms=0, tokens_per_second=5000, completion_tokens=40)


def request(*stop: str, max_tokens: int | None = None) -> adapter_service_pb2.GenerateRequest:
    message = chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="q")])
    chat_input = chat_pb2.ChatInput(
        model="m", messages=[message], stop=list(stop), max_tokens=max_tokens
    )
    return adapter_service_pb2.GenerateRequest(input=chat_input, provider_model="sim-1")


async def answer(
    req: adapter_service_pb2.GenerateRequest,
) -> tuple[str, int, events_pb2.FinishReason.ValueType]:
    """(text, completion tokens, finish reason) of one call."""
    events = [
        e async for batch in SimulatedBackend(SIM).chat(req, Deadline.after(5)) for e in batch
    ]
    text = "".join(e.content.text for e in events if e.HasField("content"))
    usage = [e.usage for e in events if e.HasField("usage")][-1]
    return text, usage.completion_tokens, events[-1].finish.reason


async def test_output_ends_before_the_first_stop_sequence_with_finish_stop() -> None:
    full, _, _ = await answer(request())
    # A word from the middle of the answer, so there is text on both sides of it.
    word = full.split()[len(full.split()) // 2].rstrip(".")
    text, tokens, finish = await answer(request("zzz-never", word))
    assert text == full[: full.index(word)]
    assert word not in text
    assert finish == events_pb2.FINISH_REASON_STOP
    assert tokens == len(text.split()) + text.endswith(" ")  # the space before the stop


async def test_the_earliest_of_several_stop_sequences_wins() -> None:
    full, _, _ = await answer(request())
    words = full.split()
    early, late = words[3].rstrip("."), words[10].rstrip(".")
    text, _, _ = await answer(request(late, early))
    assert text == full[: full.index(early)]


async def test_a_stop_sequence_not_in_the_output_changes_nothing() -> None:
    full, tokens, finish = await answer(request())
    assert await answer(request("zzz-never")) == (full, tokens, finish)


async def test_max_tokens_reached_before_the_stop_sequence_finishes_length() -> None:
    full, _, _ = await answer(request())
    late = full.split()[-2].rstrip(".")
    _, tokens, finish = await answer(request(late, max_tokens=3))
    assert tokens == 3
    assert finish == events_pb2.FINISH_REASON_LENGTH
