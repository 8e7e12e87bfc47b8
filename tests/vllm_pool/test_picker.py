"""Picking a replica: load score, power of two choices, prefix affinity with bounded load.
Replicas are fakes whose load comes from vLLM-format /metrics pages."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

from adapters.backend import Backend, Batch
from adapters.deadline import Deadline
from imesh.v1 import pool_service_pb2 as pb
from imesh.v1.adapter_service_pb2 import GenerateRequest
from tests.vllm_pool.fake_vllm import vllm_metrics
from vllm_pool.health import ReplicaHealth
from vllm_pool.load import load_from_metrics
from vllm_pool.picker import HashRing, ReplicaPicker
from vllm_pool.replica import PoolReplica


class _NoBackend(Backend):
    def chat(self, request: GenerateRequest, deadline: Deadline) -> AsyncIterator[Batch]:
        raise AssertionError("picking never calls a replica")


def replica(rid: str, **metrics: float) -> PoolReplica:
    record = pb.Replica(
        spec=pb.ReplicaSpec(pool="p", replica_id=rid, models=["tiny"]),
        state=pb.REPLICA_STATE_READY,
        load=load_from_metrics(vllm_metrics(**metrics)),  # type: ignore[arg-type]
    )
    return PoolReplica(record, _NoBackend(), ReplicaHealth(eject_after=1, eject_s=1, max_eject_s=1))


def picks(
    picker: ReplicaPicker, replicas: list[PoolReplica], key: str | None, n: int
) -> Counter[str]:
    return Counter(picker.rank(replicas, key)[0].id for _ in range(n))


def test_two_replicas_the_idle_one_is_always_first() -> None:
    busy, idle = replica("busy", running=6, waiting=2), replica("idle")

    assert picks(ReplicaPicker(rng=random.Random(1)), [busy, idle], None, 50) == {"idle": 50}


def test_waiting_requests_weigh_more_than_running_ones() -> None:
    queued, running = replica("queued", waiting=3), replica("running", running=4)

    assert ReplicaPicker().rank([queued, running], None)[0].id == "running"


def test_a_full_kv_cache_counts_against_a_replica() -> None:
    full, empty = replica("full", running=1, kv=0.95), replica("empty", running=2, kv=0.05)

    assert ReplicaPicker().rank([full, empty], None)[0].id == "empty"


def test_the_routers_own_in_flight_calls_count_between_heartbeats() -> None:
    a, b = replica("a"), replica("b")
    a.in_flight = 3

    assert ReplicaPicker().rank([a, b], None)[0].id == "b"


def test_power_of_two_never_picks_the_most_loaded_of_three() -> None:
    replicas = [replica("low"), replica("mid", running=3), replica("high", running=9)]

    counts = picks(ReplicaPicker(rng=random.Random(7)), replicas, None, 300)

    assert "high" not in counts


def test_power_of_two_spreads_over_equally_loaded_replicas() -> None:
    replicas = [replica(f"r{i}") for i in range(4)]

    counts = picks(ReplicaPicker(rng=random.Random(3)), replicas, None, 400)

    assert set(counts) == {"r0", "r1", "r2", "r3"}


def test_the_rest_of_the_order_is_by_score_for_retries() -> None:
    replicas = [replica("c", running=5), replica("a"), replica("b", running=2)]

    rest = ReplicaPicker().rank(replicas, "key:x")[1:]

    assert [r.score for r in rest] == sorted(r.score for r in rest)


def test_a_repeated_prefix_goes_to_the_same_replica() -> None:
    replicas = [replica(f"r{i}") for i in range(4)]
    picker = ReplicaPicker(rng=random.Random(5))

    assert len(picks(picker, replicas, "prefix:You are a helpful assistant", 20)) == 1


def test_different_prefixes_spread_over_the_replicas() -> None:
    replicas = [replica(f"r{i}") for i in range(4)]
    picker = ReplicaPicker()

    firsts = {picker.rank(replicas, f"prefix:conversation {i}")[0].id for i in range(200)}

    assert firsts == {"r0", "r1", "r2", "r3"}


def test_affinity_gives_way_when_its_replica_is_over_the_load_bound() -> None:
    replicas = [replica(f"r{i}") for i in range(3)]
    picker = ReplicaPicker(load_bound=1.25)
    home = picker.rank(replicas, "key:conv-1")[0]
    home.record.load.running = 6  # bound: ceil(1.25 * 7 / 3) = 3

    assert picker.rank(replicas, "key:conv-1")[0] is not home


def test_affinity_keeps_its_replica_while_under_the_bound() -> None:
    replicas = [replica(f"r{i}", running=2) for i in range(3)]
    picker = ReplicaPicker(load_bound=1.25)
    home = picker.rank(replicas, "key:conv-1")[0]
    home.in_flight = 1  # 3 of a total of 7: bound ceil(1.25 * 8 / 3) = 4

    assert picker.rank(replicas, "key:conv-1")[0] is home


def test_adding_a_replica_moves_only_about_its_share_of_keys() -> None:
    keys = [f"k{i}" for i in range(2000)]
    before = HashRing(["a", "b", "c", "d"])
    after = HashRing(["a", "b", "c", "d", "e"])

    moved = sum(before.walk(k)[0] != after.walk(k)[0] for k in keys)

    assert all(after.walk(k)[0] == "e" for k in keys if before.walk(k)[0] != after.walk(k)[0])
    assert moved < len(keys) * 0.35  # about 1/5 expected


def test_a_single_candidate_is_returned_as_is() -> None:
    only = replica("only", running=50)

    assert ReplicaPicker().rank([only], "key:x") == [only]
