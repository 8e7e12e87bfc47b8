"""The pool as a Backend of provider kind `vllm_pool`: one call picks a replica serving
the deployment's model and streams from it; a failure before the first token moves the
call to another replica."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

from adapters.backend import Backend, Batch
from adapters.config import OpenAICompatibleConfig
from adapters.deadline import Deadline
from adapters.hop_auth import ClientSecurity
from adapters.openai_compatible import OpenAICompatibleBackend
from adapters.pool_config import VllmPoolConfig
from imesh.errors import Fault, MeshError, Reason, classify
from imesh.v1 import adapter_service_pb2, chat_pb2
from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.grpc_replica import GrpcReplicaBackend
from vllm_pool.health import ReplicaHealth
from vllm_pool.picker import ReplicaPicker
from vllm_pool.replica import PoolReplica
from vllm_pool.view import PoolView


class PoolBackend(Backend):
    """Lifecycle: built from a `vllm_pool` provider entry; starts watching the pool on
    its first call; `aclose()` stops watching and closes every replica's transport.

    Replicas are tried in the picker's order, at most `max_replica_attempts` of them,
    and only before output began; after that a failure ends the call with the
    replica's UPSTREAM_INTERRUPTED and the partial usage. Each attempt's outcome feeds
    the replica's health (passive ejection); the caller's own faults judge nothing.
    """

    def __init__(
        self,
        config: VllmPoolConfig,
        *,
        view: PoolView | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._view = view or PoolView(
            ClientSecurity.from_config(config.tls, None).channel(config.address),
            pool=config.pool,
            token=config.token.resolve(),
            build_backend=self._replica_backend,
            build_health=self._health,
        )
        self._picker = ReplicaPicker(load_bound=config.affinity_load_bound, rng=rng)

    def __repr__(self) -> str:
        return f"PoolBackend(pool={self._config.pool!r})"

    @property
    def view(self) -> PoolView:
        return self._view

    async def chat(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> AsyncIterator[Batch]:
        order = await self._candidates(request, deadline)
        failure: MeshError | None = None
        for replica in order[: self._config.max_replica_attempts]:
            if not replica.health.available():
                continue
            replica.health.admit()
            replica.in_flight += 1
            replica.calls += 1
            started = False
            verdict = False
            try:
                # Backends are async generators: closing this call closes the replica's
                # stream now, not when the garbage collector finds it.
                stream = cast(AsyncGenerator[Batch, None], replica.backend.chat(request, deadline))
                async with aclosing(stream):
                    async for batch in stream:
                        started = True
                        yield batch
                replica.health.succeeded()
                verdict = True
                return
            except MeshError as err:
                judged = classify(err)
                if judged.fault is Fault.UPSTREAM:
                    replica.health.failed()
                    verdict = True
                failure = err.with_metadata(replica=replica.id)
                if started or not judged.retryable:
                    raise failure from None
            finally:
                if not verdict:
                    replica.health.released()
                replica.in_flight -= 1
                self._view.release(replica)
        raise failure or self._none_ready(request.provider_model)

    async def _candidates(
        self, request: adapter_service_pb2.GenerateRequest, deadline: Deadline
    ) -> list[PoolReplica]:
        view = self._view
        view.start()
        if not view.synced.is_set():
            wait = self._config.membership_wait_s
            remaining = deadline.remaining()
            try:
                await _wait_for(view, min(wait, remaining) if remaining is not None else wait)
            except TimeoutError:
                raise MeshError.of(
                    Reason.UPSTREAM_UNAVAILABLE,
                    f"pool {view.pool}: no membership from the pool service yet",
                ) from None
        model = request.provider_model
        candidates = [
            r for r in view.replicas() if r.ready and r.serves(model) and r.health.available()
        ]
        if not candidates:
            raise self._none_ready(model)
        return self._picker.rank(candidates, self._affinity_key(request.input))

    def _affinity_key(self, chat: chat_pb2.ChatInput) -> str | None:
        if chat.routing.affinity_key:
            return f"key:{chat.routing.affinity_key}"
        limit = self._config.affinity_prefix_chars
        if limit == 0:
            return None
        parts: list[str] = []
        size = 0
        for message in chat.messages:
            for part in message.content:
                parts.append(part.text)
                size += len(part.text)
                if size >= limit:
                    return "prefix:" + "\x1f".join(parts)[:limit]
            parts.append("\x1e")
        return "prefix:" + "\x1f".join(parts)

    def _none_ready(self, model: str) -> MeshError:
        return MeshError.of(
            Reason.UPSTREAM_UNAVAILABLE,
            f"pool {self._config.pool}: no ready replica serves {model!r}",
            metadata={"pool": self._config.pool},
        )

    def _replica_backend(self, spec: pb.ReplicaSpec) -> Backend:
        if spec.transport == pb.REPLICA_TRANSPORT_GRPC:
            return GrpcReplicaBackend(
                spec.address,
                tokenizer_dir=self._config.tokenizer_dir,
                first_token_timeout_s=self._config.timeouts.first_byte,
            )
        return OpenAICompatibleBackend(
            OpenAICompatibleConfig(
                kind="openai_compatible",
                base_url=f"{spec.address.rstrip('/')}/v1",
                timeouts=self._config.timeouts,
                max_connections=self._config.max_connections,
            )
        )

    def _health(self) -> ReplicaHealth:
        c = self._config
        return ReplicaHealth(
            eject_after=c.eject_after_failures, eject_s=c.eject_s, max_eject_s=c.max_eject_s
        )

    async def aclose(self) -> None:
        await self._view.aclose()


async def _wait_for(view: PoolView, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        await view.synced.wait()
