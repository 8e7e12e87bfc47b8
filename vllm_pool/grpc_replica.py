"""One replica over vLLM's native gRPC engine API (`vllm.grpc.engine.VllmEngine`), as a
Backend: the pool renders and tokenizes the prompt, streams `Generate`, detokenizes the
streamed ids, and calls `Abort` when the caller goes away.

This skips vLLM's Python HTTP server. Usage is vLLM's own: the prompt's token count from
the engine, one completion token per streamed id, and the prefix-cache hit count.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from adapters.http_errors import interrupted
from imesh.errors import MeshError, Reason, invalid_argument
from imesh.v1 import adapter_service_pb2, chat_pb2, events_pb2
from vllm_pool.engine_probe import fetch_tokenizer_zip
from vllm_pool.prompt import PromptRenderer

log = logging.getLogger(__name__)

PROVIDER = "vllm"
_FINISH = {
    "stop": events_pb2.FINISH_REASON_STOP,
    "length": events_pb2.FINISH_REASON_LENGTH,
    "abort": events_pb2.FINISH_REASON_STOP,
}
_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: Reason.UPSTREAM_BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: Reason.UPSTREAM_BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.UPSTREAM_TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.UPSTREAM_OVERLOADED,
    grpc.StatusCode.NOT_FOUND: Reason.UPSTREAM_MODEL_NOT_FOUND,
}
_ABORT_TIMEOUT_S = 2.0
# A prompt with more text than this is templated and tokenized on a worker thread: on
# the loop it would stall every other stream (about 1 ms per 10k characters and more).
OFF_LOOP_PROMPT_CHARS = 8 * 1024


class GrpcReplicaBackend(Backend):
    """Lifecycle: one per replica, built when the pool first lists it; `aclose()` when
    it leaves the pool (closes the channel). The prompt renderer is fetched from the
    replica once (`GetTokenizer`), or read from `tokenizer_dir` when given."""

    def __init__(
        self,
        address: str,
        *,
        tokenizer_dir: Path | None = None,
        first_token_timeout_s: float = 30.0,
    ) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address)
        self._engine = vllm_engine_pb2_grpc.VllmEngineStub(self._channel)
        self._tokenizer_dir = tokenizer_dir
        self._first_token_timeout_s = first_token_timeout_s
        self._renderer: PromptRenderer | None = None
        self._renderer_lock = asyncio.Lock()
        self._aborts: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"GrpcReplicaBackend({self.address!r})"

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        renderer = await self._prompt_renderer(deadline)
        prompt_ids = await prompt_ids_of(renderer, request.input)
        request_id = f"imesh-{uuid.uuid4().hex}"
        call = self._engine.Generate(
            vllm_engine_pb2.GenerateRequest(
                request_id=request_id,
                tokenized=vllm_engine_pb2.TokenizedInput(input_ids=prompt_ids),
                sampling_params=_sampling(request.input),
                stream=True,
            ),
            timeout=deadline.remaining(),
        )
        detokenizer = renderer.detokenizer()
        usage = events_pb2.Usage(prompt_tokens=len(prompt_ids))
        started = finished = False
        try:
            failure: MeshError | None = None
            try:
                async for answer in call:
                    if answer.HasField("chunk"):
                        chunk = answer.chunk
                        usage.completion_tokens += len(chunk.token_ids)
                        usage.prompt_tokens = chunk.prompt_tokens or usage.prompt_tokens
                        usage.cached_tokens = max(usage.cached_tokens, chunk.cached_tokens)
                        text = detokenizer.add(list(chunk.token_ids))
                        if text:
                            started = True
                            yield [_content(text)]
                    elif answer.HasField("complete"):
                        # In a stream the last delta came as a chunk too: counts only.
                        done = answer.complete
                        usage.prompt_tokens = done.prompt_tokens or usage.prompt_tokens
                        usage.cached_tokens = max(usage.cached_tokens, done.cached_tokens)
                        finished = True
                        tail = detokenizer.flush()
                        reason = _FINISH.get(done.finish_reason, events_pb2.FINISH_REASON_STOP)
                        yield [
                            *([_content(tail)] if tail else []),
                            events_pb2.ChatEvent(usage=usage),
                            events_pb2.ChatEvent(finish=events_pb2.Finish(reason=reason)),
                        ]
                        return
            except grpc.aio.AioRpcError as err:
                failure = _error(err, self.address)
            if failure is None:
                failure = MeshError.of(
                    Reason.UPSTREAM_UNAVAILABLE,
                    f"{PROVIDER} at {self.address}: stream ended before its final message",
                    metadata={"provider": PROVIDER, "replica": self.address},
                )
            if not started:
                raise failure
            yield [events_pb2.ChatEvent(usage=usage)]
            raise interrupted(failure, usage)
        finally:
            if not finished:
                call.cancel()
                self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        """Tells the engine to stop now. Cancelling the call alone ends vLLM's request only
        when its servicer notices; the explicit Abort frees the KV blocks at once. Sent
        from a task of its own: the caller's task may be cancelled already."""
        task = asyncio.get_running_loop().create_task(self._send_abort(request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _send_abort(self, request_id: str) -> None:
        try:
            await self._engine.Abort(
                vllm_engine_pb2.AbortRequest(request_ids=[request_id]), timeout=_ABORT_TIMEOUT_S
            )
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as err:
            # The engine is gone or the replica left the pool: nothing left to abort.
            log.debug("abort of %s at %s failed: %r", request_id, self.address, err)

    async def _prompt_renderer(self, deadline: Deadline) -> PromptRenderer:
        if self._renderer is not None:
            return self._renderer
        async with self._renderer_lock:
            if self._renderer is None:
                # Reading and parsing a tokenizer takes tens of milliseconds: off the loop.
                if self._tokenizer_dir is not None:
                    self._renderer = await asyncio.to_thread(
                        PromptRenderer.from_directory, self._tokenizer_dir
                    )
                else:
                    remaining = deadline.remaining()
                    timeout = min(
                        self._first_token_timeout_s, remaining or self._first_token_timeout_s
                    )
                    try:
                        data = await fetch_tokenizer_zip(self._engine, timeout)
                    except grpc.aio.AioRpcError as err:
                        raise _error(err, self.address) from None
                    self._renderer = await asyncio.to_thread(PromptRenderer.from_zip, data)
        return self._renderer

    async def aclose(self) -> None:
        for task in list(self._aborts):
            await asyncio.wait({task}, timeout=_ABORT_TIMEOUT_S)
        await self._channel.close(None)


async def prompt_ids_of(renderer: PromptRenderer, chat: chat_pb2.ChatInput) -> list[int]:
    """The prompt's token ids; a large prompt's are computed on a worker thread."""
    size = sum(len(part.text) for message in chat.messages for part in message.content)
    if size > OFF_LOOP_PROMPT_CHARS:
        return await asyncio.to_thread(renderer.prompt_ids, chat)
    return renderer.prompt_ids(chat)


def _sampling(chat: chat_pb2.ChatInput) -> vllm_engine_pb2.SamplingParams:
    if chat.tools:
        raise invalid_argument("tools", "the native vLLM transport does not support tools")
    params = vllm_engine_pb2.SamplingParams(n=1, skip_special_tokens=True)
    if chat.HasField("temperature"):
        params.temperature = chat.temperature
    params.top_p = chat.top_p if chat.HasField("top_p") else 1.0
    if chat.HasField("max_tokens") and chat.max_tokens > 0:
        params.max_tokens = chat.max_tokens
    params.stop.extend(chat.stop)
    if chat.HasField("seed"):
        params.seed = chat.seed & 0x7FFFFFFF
    return params


def _content(text: str) -> events_pb2.ChatEvent:
    return events_pb2.ChatEvent(content=events_pb2.ContentDelta(text=text))


def _error(err: grpc.aio.AioRpcError, address: str) -> MeshError:
    code = err.code()
    reason = _REASONS.get(code, Reason.UPSTREAM_UNAVAILABLE)
    return MeshError.of(
        reason,
        f"{PROVIDER} at {address}: {code.name}: {err.details() or ''}".rstrip(": "),
        metadata={"provider": PROVIDER, "replica": address},
    )
