"""SimulatedBackend: a deterministic provider for demos, benchmarks and chaos drills.

The same seed and request always give the same answer; pacing follows ttft_ms and
tokens_per_second; failures (errors, stalls, cuts) are drawn from a seeded generator so a
drill can be replayed exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from adapters.backend import Backend, Batch
from adapters.config import SimulatedConfig
from adapters.deadline import Deadline
from imesh.errors import MeshError, Reason, invalid_argument
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2

RngFactory = Callable[[int], random.Random]

_CORPUS = (
    "the mesh routes each request to a healthy deployment and streams tokens back as they "
    "arrive while breakers watch failures budgets bound spend and hedges race slow starts "
    "every token is counted priced settled and reported so tenants see exactly what they "
    "used latency stays low because work happens once config loads at start and the hot "
    "path does nothing twice"
)
_WORDS = tuple(_CORPUS.split())
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Tokens due within this window of "now" go out together instead of sleeping per token.
_SLACK_S = 0.001
_MAX_SCHEMA_DEPTH = 8
_MAX_ARRAY_ITEMS = 5
# Prompts within these bounds are hashed and counted inline; larger ones on a thread.
_INLINE_MESSAGES = 16
_INLINE_CHARS = 16 * 1024


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: words and punctuation marks (deterministic, cheap)."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True, slots=True)
class _Unit:
    """One paced emission: an event and the completion tokens it carries."""

    event: events_pb2.ChatEvent
    tokens: int


class SimulatedBackend(Backend):
    """A fake provider with real pacing and failure modes; see SimulatedConfig.

    Counters (`calls_started`, `calls_cancelled`, `last_cancelled_at`) let tests and chaos
    drills observe that cancellation reached the "upstream".
    """

    def __init__(self, config: SimulatedConfig, *, rng_factory: RngFactory | None = None) -> None:
        self._config = config
        self._rng_factory: RngFactory = rng_factory or random.Random
        # One generator per backend for the error draw, so a run's failures are reproducible.
        self._error_rng = self._rng_factory(config.seed)
        self._interval = 1.0 / config.tokens_per_second
        self.calls_started = 0
        self.calls_cancelled = 0
        self.last_cancelled_at: float | None = None

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        """Units due together go out as one batch, as a provider's burst arrives in one read."""
        self.calls_started += 1
        cfg = self._config
        start = time.monotonic()
        try:
            if self._error_rng.random() < cfg.error_rate:
                raise self._drawn_error()
            if _is_small(request.input):
                seed, prompt_tokens = self._measure(request)
            else:  # hashing and counting cost ~0.15 s per MB of prompt: off the event loop
                seed, prompt_tokens = await asyncio.to_thread(self._measure, request)
            rng = self._rng_factory(seed)
            units, finish = _plan(request.input, rng, cfg.completion_tokens)
            first_due = start + cfg.ttft_ms / 1000.0
            completion = 0
            failure: MeshError | None = None
            sent = 0
            total = len(units)
            while sent < total:
                if sent == cfg.cut_after_tokens:
                    failure = MeshError.of(
                        Reason.UPSTREAM_INTERRUPTED, f"simulated stream cut after {sent} tokens"
                    )
                    break
                due = None if sent == cfg.stall_after_tokens else first_due + sent * self._interval
                if not await _sleep_until(due, deadline):
                    failure = MeshError.of(
                        Reason.UPSTREAM_TIMEOUT, f"deadline passed after {sent} simulated tokens"
                    )
                    break
                # Everything due by now (and before a stall or cut) goes in this batch.
                now = time.monotonic() + _SLACK_S
                end = sent + 1
                while (
                    end < total
                    and end != cfg.cut_after_tokens
                    and end != cfg.stall_after_tokens
                    and first_due + end * self._interval <= now
                ):
                    end += 1
                batch = [unit.event for unit in units[sent:end]]
                completion += sum(unit.tokens for unit in units[sent:end])
                sent = end
                if sent == total:
                    batch.append(_usage(prompt_tokens, completion))
                    batch.append(events_pb2.ChatEvent(finish=events_pb2.Finish(reason=finish)))
                yield batch
            if failure is None:
                if not total:
                    yield [
                        _usage(prompt_tokens, 0),
                        events_pb2.ChatEvent(finish=events_pb2.Finish(reason=finish)),
                    ]
                return
            if sent:  # output began: the caller is owed the usage so far (Backend contract)
                usage = _usage(prompt_tokens, completion)
                yield [usage]
                failure = failure.with_usage(usage.usage)
            raise failure
        except (GeneratorExit, asyncio.CancelledError):
            self.calls_cancelled += 1
            self.last_cancelled_at = time.monotonic()
            raise

    def _drawn_error(self) -> MeshError:
        kind = self._config.error_kind
        if kind == "rate_limited":
            return MeshError.of(
                Reason.UPSTREAM_RATE_LIMITED,
                "simulated provider rate limit (429)",
                retry_after=self._config.retry_after_s,
            )
        if kind == "internal":
            # A provider's 500, kept apart from "unavailable" by its code.
            return MeshError(
                grpc.StatusCode.INTERNAL,
                Reason.UPSTREAM_UNAVAILABLE,
                "simulated provider error (500)",
            )
        return MeshError.of(Reason.UPSTREAM_UNAVAILABLE, "simulated provider unavailable")

    def _measure(self, request: adapter_service_pb2.GenerateRequest) -> tuple[int, int]:
        return self._request_seed(request), _prompt_tokens(request.input)

    def _request_seed(self, request: adapter_service_pb2.GenerateRequest) -> int:
        digest = hashlib.blake2b(digest_size=8)
        digest.update(str(self._config.seed).encode())
        digest.update(request.provider_model.encode())
        chat_input = request.input
        if chat_input.stop:  # stop sequences cut the answer; they do not choose it
            chat_input = chat_pb2.ChatInput()
            chat_input.CopyFrom(request.input)
            chat_input.ClearField("stop")
        digest.update(chat_input.SerializeToString(deterministic=True))
        return int.from_bytes(digest.digest(), "big")


def _usage(prompt_tokens: int, completion_tokens: int) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(
        usage=events_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    )


async def _sleep_until(due: float | None, deadline: Deadline) -> bool:
    """Sleep to the absolute instant `due` (None: forever), cut short by the deadline.

    Returns False when the deadline cut the wait. Waiting for absolute instants keeps the
    pace free of drift; instants already (nearly) due cost no sleep at all.
    """
    now = time.monotonic()
    if deadline.expired():
        return False
    if deadline.bounded and (due is None or due >= deadline.at):
        await asyncio.sleep(deadline.remaining())
        return False
    if due is None:
        await asyncio.Event().wait()  # until cancelled
        return False
    if due > now + _SLACK_S:
        await asyncio.sleep(due - now)
    return True


def _is_small(chat_input: chat_pb2.ChatInput) -> bool:
    """Cheap to hash and count inline (checked without walking a large input)."""
    if len(chat_input.messages) > _INLINE_MESSAGES or chat_input.tools:
        return False
    size = sum(len(p.text) for m in chat_input.messages for p in m.content)
    return size <= _INLINE_CHARS


def _prompt_tokens(chat_input: chat_pb2.ChatInput) -> int:
    total = 0
    for message in chat_input.messages:
        for part in message.content:
            if part.HasField("text"):
                total += count_tokens(part.text)
        for call in message.tool_calls:
            total += count_tokens(call.name) + count_tokens(call.arguments_json)
    for tool in chat_input.tools:
        total += count_tokens(tool.name) + count_tokens(tool.description)
    return total


def _plan(
    chat_input: chat_pb2.ChatInput, rng: random.Random, completion_tokens: int
) -> tuple[list[_Unit], events_pb2.FinishReason.ValueType]:
    """The whole answer as paced units, and how it finishes."""
    tool = _forced_tool(chat_input)
    if tool is not None:
        return _tool_call_units(tool, rng), events_pb2.FINISH_REASON_TOOL_CALLS
    fmt = chat_input.response_format.type
    if fmt == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema = _load_json(chat_input.response_format.json_schema)
        text = json.dumps(_value_for(schema, rng, 0))
    elif fmt == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        text = json.dumps({"answer": _sentence(rng, max(1, completion_tokens - 3)).strip()})
    else:
        text = _sentence(rng, completion_tokens)
    # As a model does: the output ends before the first stop sequence, which is not sent.
    cut = min(
        (i for i in (text.find(stop) for stop in chat_input.stop if stop) if i >= 0), default=-1
    )
    if cut >= 0:
        text = text[:cut]
    pieces = re.findall(r"\s*\S+|\s+$", text)
    limit = chat_input.max_tokens if chat_input.HasField("max_tokens") else 0
    finish = events_pb2.FINISH_REASON_STOP
    if 0 < limit < len(pieces):
        pieces, finish = pieces[:limit], events_pb2.FINISH_REASON_LENGTH
    units = [
        _Unit(events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=p)), 1) for p in pieces
    ]
    return units, finish


def _sentence(rng: random.Random, n: int) -> str:
    """n words, each with its leading space, in sentences of 8-14 words."""
    out: list[str] = []
    until_stop = rng.randint(8, 14)
    capital = True
    for i in range(n):
        word = rng.choice(_WORDS)
        if capital:
            word = word.capitalize()
        until_stop -= 1
        capital = until_stop == 0 or i == n - 1
        if capital:
            word += "."
            until_stop = rng.randint(8, 14)
        out.append(" " + word)
    return "".join(out)


def _forced_tool(chat_input: chat_pb2.ChatInput) -> chat_pb2.Tool | None:
    if not chat_input.tools:
        return None
    choice = chat_input.tool_choice.WhichOneof("choice")
    if choice == "function_name":
        name = chat_input.tool_choice.function_name
        for tool in chat_input.tools:
            if tool.name == name:
                return tool
        raise invalid_argument("tool_choice.function_name", f"no tool named {name!r}")
    if choice == "mode" and chat_input.tool_choice.mode == chat_pb2.TOOL_CHOICE_MODE_REQUIRED:
        return chat_input.tools[0]
    return None


def _tool_call_units(tool: chat_pb2.Tool, rng: random.Random) -> list[_Unit]:
    """One call: id and name first, then the arguments JSON in 2-3 pieces."""
    arguments = json.dumps(_value_for(_load_json(tool.parameters_json), rng, 0))
    n_pieces = 2 if len(arguments) < 24 else 3
    step = -(-len(arguments) // n_pieces)
    call_id = f"call_{rng.getrandbits(64):016x}"
    units = [
        _Unit(
            events_pb2.ChatEvent(
                tool_call=events_pb2.ToolCallDelta(index=0, id=call_id, name=tool.name)
            ),
            count_tokens(tool.name),
        )
    ]
    for k in range(0, len(arguments), step):
        piece = arguments[k : k + step]
        units.append(
            _Unit(
                events_pb2.ChatEvent(
                    tool_call=events_pb2.ToolCallDelta(index=0, arguments_delta=piece)
                ),
                count_tokens(piece),
            )
        )
    return units


def _load_json(text: str) -> object:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _value_for(schema: object, rng: random.Random, depth: int) -> object:
    """A deterministic value of the schema's type; objects get their required properties."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value_for(options[0], rng, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {n: _value_for(props.get(n, {}), rng, depth + 1) for n in names}
    if kind == "array":
        # Capped: the schema comes from the caller and must not size our memory.
        count = min(max(1, _int_or(schema.get("minItems"), 1)), _MAX_ARRAY_ITEMS)
        return [_value_for(schema.get("items", {}), rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = _int_or(schema.get("minimum"), 0)
        return rng.randint(low, max(low, _int_or(schema.get("maximum"), low + 100)))
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _sentence(rng, 2).strip().rstrip(".").lower()


def _int_or(value: object, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(value)
