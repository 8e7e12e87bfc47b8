"""A replica's load, read from vLLM's Prometheus `/metrics` text or its gRPC `GetLoads`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from imesh.v1 import pool_service_pb2

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# vLLM renamed the KV-cache gauge; whichever the installed version exports is read.
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = "vllm:prefix_cache_queries"
PREFIX_HITS = "vllm:prefix_cache_hits"


class _SchedulerLoad(Protocol):
    """The fields read from vllm.grpc.engine.SchedulerLoad."""

    @property
    def num_running_reqs(self) -> int: ...
    @property
    def num_waiting_reqs(self) -> int: ...
    @property
    def token_usage(self) -> float: ...
    @property
    def cache_hit_rate(self) -> float: ...


def load_from_metrics(text: str) -> pool_service_pb2.ReplicaLoad:
    """The load in one `/metrics` scrape. Series of several engines (data-parallel ranks,
    several served model names) are summed; the KV usage is their maximum.

    The prometheus parser names a counter's family without `_total`, so the prefix-cache
    counters are looked up by their family name.
    """
    sums: dict[str, float] = {}
    kv: float | None = None
    for family in text_string_to_metric_families(text):
        values = _values(family.samples, family.name)
        if family.name in (RUNNING, WAITING, PREFIX_QUERIES, PREFIX_HITS):
            sums[family.name] = sums.get(family.name, 0.0) + sum(values)
        elif family.name in KV_USAGE and values:
            kv = max(values) if kv is None else max(kv, *values)
    queries = sums.get(PREFIX_QUERIES, 0.0)
    return pool_service_pb2.ReplicaLoad(
        running=int(sums.get(RUNNING, 0.0)),
        waiting=int(sums.get(WAITING, 0.0)),
        kv_cache_usage=_unit(kv or 0.0),
        prefix_cache_hit_rate=_unit(sums.get(PREFIX_HITS, 0.0) / queries) if queries else 0.0,
    )


def _values(samples: Iterable[Sample], family: str) -> list[float]:
    # Counters carry `_total` and `_created` samples; only the value series counts.
    wanted = {family, f"{family}_total"}
    return [s.value for s in samples if s.name in wanted]


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def load_from_scheduler(loads: Iterable[_SchedulerLoad]) -> pool_service_pb2.ReplicaLoad:
    """The load in a gRPC `GetLoads` answer: one SchedulerLoad per data-parallel rank."""
    running = waiting = 0
    kv = hit = 0.0
    ranks = 0
    for rank in loads:
        ranks += 1
        running += rank.num_running_reqs
        waiting += rank.num_waiting_reqs
        kv = max(kv, rank.token_usage)
        hit += rank.cache_hit_rate
    return pool_service_pb2.ReplicaLoad(
        running=running,
        waiting=waiting,
        kv_cache_usage=_unit(kv),
        prefix_cache_hit_rate=_unit(hit / ranks) if ranks else 0.0,
    )
