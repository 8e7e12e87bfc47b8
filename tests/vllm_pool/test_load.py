"""A replica's load from vLLM's /metrics page and from its gRPC GetLoads."""

from __future__ import annotations

import pytest
from smg_grpc_proto import vllm_engine_pb2

from tests.vllm_pool.fake_vllm import vllm_metrics
from vllm_pool.load import load_from_metrics, load_from_scheduler


def test_running_waiting_and_kv_usage_are_read_from_metrics() -> None:
    load = load_from_metrics(vllm_metrics(running=3, waiting=2, kv=0.25))

    assert (load.running, load.waiting, load.kv_cache_usage) == (3, 2, 0.25)


@pytest.mark.parametrize("legacy", [False, True])
def test_kv_usage_is_read_under_either_metric_name(legacy: bool) -> None:
    load = load_from_metrics(vllm_metrics(kv=0.5, legacy_kv_name=legacy))

    assert load.kv_cache_usage == 0.5


def test_prefix_cache_hit_rate_is_hits_over_queries() -> None:
    load = load_from_metrics(vllm_metrics(queries=200, hits=50))

    assert load.prefix_cache_hit_rate == 0.25


def test_no_prefix_cache_queries_means_a_zero_hit_rate() -> None:
    assert load_from_metrics(vllm_metrics()).prefix_cache_hit_rate == 0.0


def test_series_of_several_engines_are_summed() -> None:
    page = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 1.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 3.0
"""

    load = load_from_metrics(page)

    assert (load.running, load.waiting) == (3, 4)


def test_scheduler_loads_of_every_rank_are_summed() -> None:
    loads = [
        vllm_engine_pb2.SchedulerLoad(
            num_running_reqs=2, num_waiting_reqs=1, token_usage=0.2, cache_hit_rate=0.5
        ),
        vllm_engine_pb2.SchedulerLoad(
            num_running_reqs=1, num_waiting_reqs=4, token_usage=0.6, cache_hit_rate=0.1
        ),
    ]

    load = load_from_scheduler(loads)

    assert (load.running, load.waiting, load.kv_cache_usage) == (3, 5, 0.6)
