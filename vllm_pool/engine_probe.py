"""What the replica agent asks its vLLM server: health, what it serves, and its load, over
either of vLLM's APIs (the OpenAI HTTP server or the native gRPC engine server)."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass

import grpc
import httpx
from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc
from smg_grpc_proto.generated import common_pb2

from imesh.v1 import pool_service_pb2 as pb
from vllm_pool.load import load_from_metrics, load_from_scheduler

# vLLM streams tokens either way, and has no reliable way to tell whether tool calling
# was enabled at its start (`--enable-auto-tool-choice`): only streaming is claimed.
_CAPABILITIES = ("streaming",)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    models: tuple[str, ...]
    max_context_length: int
    capabilities: tuple[str, ...] = _CAPABILITIES


class EngineProbe(abc.ABC):
    """One vLLM server as its agent sees it.

    Lifecycle: built from the server's address, used by one agent, `aclose()`d when the
    agent exits. Each call is bounded by `timeout_s`; failures raise (httpx.HTTPError or
    grpc.RpcError), and the agent decides what they mean.
    """

    transport: pb.ReplicaTransport.ValueType
    address: str

    @abc.abstractmethod
    async def healthy(self) -> bool: ...

    @abc.abstractmethod
    async def info(self) -> EngineInfo: ...

    @abc.abstractmethod
    async def load(self) -> pb.ReplicaLoad: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class HttpEngineProbe(EngineProbe):
    """`/health`, `/v1/models` and `/metrics` of vLLM's OpenAI server."""

    transport = pb.REPLICA_TRANSPORT_HTTP

    def __init__(self, base_url: str, *, timeout_s: float = 2.0) -> None:
        self.address = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.address, timeout=timeout_s)

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def info(self) -> EngineInfo:
        response = await self._http.get("/v1/models")
        response.raise_for_status()
        cards = response.json()["data"]
        return EngineInfo(
            models=tuple(card["id"] for card in cards),
            max_context_length=max(
                (int(card.get("max_model_len") or 0) for card in cards), default=0
            ),
        )

    async def load(self) -> pb.ReplicaLoad:
        response = await self._http.get("/metrics")
        response.raise_for_status()
        return load_from_metrics(response.text)

    async def aclose(self) -> None:
        await self._http.aclose()


class GrpcEngineProbe(EngineProbe):
    """`HealthCheck`, `GetModelInfo` and `GetLoads` of vLLM's gRPC engine server."""

    transport = pb.REPLICA_TRANSPORT_GRPC

    def __init__(self, address: str, *, timeout_s: float = 2.0) -> None:
        self.address = address
        self._timeout = timeout_s
        self._channel = grpc.aio.insecure_channel(address)
        self._engine = vllm_engine_pb2_grpc.VllmEngineStub(self._channel)

    async def healthy(self) -> bool:
        try:
            answer = await self._engine.HealthCheck(
                vllm_engine_pb2.HealthCheckRequest(), timeout=self._timeout
            )
        except grpc.RpcError:
            return False
        return bool(answer.healthy)

    async def info(self) -> EngineInfo:
        answer = await self._engine.GetModelInfo(
            vllm_engine_pb2.GetModelInfoRequest(), timeout=self._timeout
        )
        name = answer.served_model_name or answer.model_path
        return EngineInfo(models=(name,), max_context_length=answer.max_context_length)

    async def load(self) -> pb.ReplicaLoad:
        answer = await self._engine.GetLoads(
            vllm_engine_pb2.GetLoadsRequest(), timeout=self._timeout
        )
        return load_from_scheduler(answer.loads)

    async def tokenizer_zip(self) -> bytes:
        """The tokenizer artifacts the engine serves (a zip), checked against its sha256."""
        return await fetch_tokenizer_zip(self._engine, self._timeout)

    async def aclose(self) -> None:
        await self._channel.close(None)


async def fetch_tokenizer_zip(
    engine: vllm_engine_pb2_grpc.VllmEngineStub, timeout_s: float
) -> bytes:
    parts: list[bytes] = []
    digest = ""
    async for chunk in engine.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=timeout_s):
        parts.append(chunk.data)
        digest = chunk.sha256 or digest
    data = b"".join(parts)
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise ValueError("tokenizer artifacts do not match their sha256")
    return data
