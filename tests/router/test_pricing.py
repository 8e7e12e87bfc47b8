"""Exact integer micro-dollar costs: cached tokens, reasoning, rounding half up."""

from __future__ import annotations

import pytest

from imesh.v1 import events_pb2
from router.config import Price
from router.pricing import Rates, cost_micros, estimate_cost_micros

SMALL = Price.model_validate({"input": 0.15, "output": 0.60})
LARGE = Price.model_validate({"input": 3.00, "output": 15.00, "cached_input": 0.30})


def usage(
    prompt: int = 0, completion: int = 0, cached: int = 0, reasoning: int = 0
) -> events_pb2.Usage:
    return events_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


def test_cost_is_prompt_at_input_price_plus_completion_at_output_price() -> None:
    # 1000 x 0.15 + 500 x 0.60 = 150 + 300 micro-dollars
    assert cost_micros(usage(prompt=1000, completion=500), SMALL) == 450


def test_cached_tokens_are_charged_at_the_cached_price() -> None:
    # 2000 x 3.00 + 8000 x 0.30 + 100 x 15.00 = 6000 + 2400 + 1500
    assert cost_micros(usage(prompt=10_000, cached=8_000, completion=100), LARGE) == 9_900


def test_cached_tokens_without_a_cached_price_cost_the_input_price() -> None:
    assert cost_micros(usage(prompt=1000, cached=600, completion=500), SMALL) == 450


def test_reasoning_tokens_are_not_charged_twice() -> None:
    # Providers report reasoning inside completion_tokens.
    plain = cost_micros(usage(prompt=1000, completion=500), SMALL)
    assert cost_micros(usage(prompt=1000, completion=500, reasoning=400), SMALL) == plain


def test_cached_tokens_above_prompt_tokens_are_capped() -> None:
    assert cost_micros(usage(prompt=100, cached=500), LARGE) == 30


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (3, 0),  # 0.45 micro-dollars rounds down
        (4, 1),  # 0.60 rounds up
        (10, 2),  # 1.50: exactly half rounds up
        (30, 5),  # 4.50
        (1_000_000, 150_000),
    ],
)
def test_cost_rounds_half_up_once_on_the_total(prompt: int, expected: int) -> None:
    assert cost_micros(usage(prompt=prompt), SMALL) == expected


def test_cost_rounds_the_sum_not_each_part() -> None:
    # 3 x 0.15 = 0.45 and 1 x 0.60 = 0.60: rounded apart 0 + 1, together 1.05 -> 1;
    # 3 prompt + 2 completion: 0.45 + 1.20 = 1.65 -> 2 (apart: 0 + 1 = 1).
    assert cost_micros(usage(prompt=3, completion=2), SMALL) == 2


def test_free_price_costs_nothing() -> None:
    assert cost_micros(usage(prompt=10**9, completion=10**9), Price()) == 0


def test_estimate_charges_full_prompt_and_completion_budget() -> None:
    assert estimate_cost_micros(10_000, 4_096, LARGE) == 30_000 + 61_440
    assert estimate_cost_micros(3, 0, SMALL) == 0
    assert estimate_cost_micros(10, 0, SMALL) == 2


@pytest.mark.parametrize("price", [SMALL, LARGE, Price()])
def test_rates_price_exactly_as_the_config_price(price: Price) -> None:
    rates = Rates(price)
    assert (rates.input_micros, rates.output_micros, rates.cached_input_micros) == (
        price.input_micros,
        price.output_micros,
        price.cached_input_micros,
    )
    spent = usage(prompt=12_345, cached=2_345, completion=678)
    assert cost_micros(spent, rates) == cost_micros(spent, price)
    assert estimate_cost_micros(1_000, 4_096, rates) == estimate_cost_micros(1_000, 4_096, price)


def test_negative_counts_cost_nothing() -> None:
    assert cost_micros(usage(prompt=-5, cached=-3, completion=-7), LARGE) == 0
    assert estimate_cost_micros(-5, -7, LARGE) == 0
