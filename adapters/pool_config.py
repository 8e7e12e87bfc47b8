"""Typed config of the GPU pool: the `vllm_pool` provider kind (what a router needs to
route into a pool) and the pool service's own settings.

It lives with the other provider schemas so the mesh config (router/config.py) validates
a pool entry without importing the pool's code; the composition root registers the kind
(`vllm_pool.register_kind()`).

Two tokens, two roles: agents (and `imesh pool drain`) present an agent token (Register,
Heartbeat, Drain, Deregister, and reads), routers and `imesh pool list` a reader token
(ListReplicas, WatchReplicas only). Every router holds a reader token, and that token
cannot add a replica that would receive prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.config import ClientTLS, HttpTimeouts, SecretRef, ServerTLS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VllmPoolConfig(Strict):
    """A provider entry of kind `vllm_pool`: one pool, watched through the pool service.
    Deployments name it as their provider and a served model as their `model`."""

    kind: Literal["vllm_pool"]
    pool: str = Field(min_length=1)
    # The pool service (host:port) the router watches.
    address: str = Field(min_length=1)
    # The pool service's reader token (ListReplicas, WatchReplicas only).
    token: SecretRef
    # TLS to the pool service; None: plaintext (a loopback or mesh-encrypted hop only).
    tls: ClientTLS | None = None
    # HTTP replicas: vLLM's OpenAI server; `first_byte` also bounds gRPC replicas' first
    # token before the pool tries another replica.
    timeouts: HttpTimeouts = HttpTimeouts()
    max_connections: int = Field(100, ge=1, description="per HTTP replica")
    # Native gRPC replicas: the model's tokenizer and chat template from a path shared
    # with the replicas; None fetches them from each replica (GetTokenizer).
    tokenizer_dir: Path | None = None
    # Prefix affinity: the first this many characters of the conversation choose the
    # replica (consistent hash) unless the caller sends an affinity key; 0 turns it off.
    affinity_prefix_chars: int = Field(512, ge=0)
    # Bounded load: an affinity replica is taken only while its load stays under this
    # factor times the pool's mean (then the next replica on the ring is asked).
    affinity_load_bound: float = Field(1.25, gt=1.0)
    # Replicas tried for one call before its first token (then the error goes up).
    max_replica_attempts: int = Field(2, ge=1, le=8)
    # Passive ejection: this many failures in a row eject a replica for `eject_s`
    # (doubled on each repeat, up to `max_eject_s`); then one probe call decides.
    eject_after_failures: int = Field(3, ge=1)
    eject_s: float = Field(5.0, gt=0)
    max_eject_s: float = Field(60.0, gt=0)
    # How long a call waits for the pool's first membership after start.
    membership_wait_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ejection(self) -> VllmPoolConfig:
        if self.max_eject_s < self.eject_s:
            raise ValueError("max_eject_s must be >= eject_s")
        return self


class PoolServiceConfig(Strict):
    """`imesh pool serve`: where membership lives and how long a lease lasts."""

    listen: str = "0.0.0.0:50061"
    # Tokens of replica agents (Register, Heartbeat, Drain, Deregister); several while
    # one is rotated.
    agent_tokens: list[SecretRef] = Field(min_length=1)
    # Tokens of readers: routers and `imesh pool list` (ListReplicas, WatchReplicas).
    reader_tokens: list[SecretRef] = Field(min_length=1)
    tls: ServerTLS | None = None
    # The Redis URL by reference (it may carry a password); None: membership in this
    # process only (lost on restart).
    redis_url: SecretRef | None = None
    lease_s: float = Field(5.0, gt=0)
    heartbeat_s: float = Field(1.0, gt=0)
    # How often watchers re-read the store (writes through other instances, expiries).
    poll_s: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _lease(self) -> PoolServiceConfig:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("lease_s must allow at least two heartbeats (heartbeat_s * 2)")
        return self
