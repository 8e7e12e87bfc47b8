"""Token counts to integer micro-dollars, with the prices from config."""

from __future__ import annotations

from imesh.v1 import events_pb2
from router.config import Price

TOKENS_PER_PRICE_UNIT = 1_000_000


def _round_per_million(micro_token_products: int) -> int:
    """(tokens x micro-dollars per million tokens) -> micro-dollars, rounding half up."""
    return (micro_token_products + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def cost_micros(usage: events_pb2.Usage, price: Price) -> int:
    """What `usage` costs: uncached prompt at input price, cached prompt at cached price,
    completion (which already includes reasoning tokens) at output price.

    One rounding on the sum, so splitting a prompt into cached and uncached parts never
    costs a micro-dollar more than the exact figure rounded once.
    """
    prompt = max(usage.prompt_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    completion = max(usage.completion_tokens, 0)
    return _round_per_million(
        (prompt - cached) * price.input_micros
        + cached * price.cached_input_micros
        + completion * price.output_micros
    )


def estimate_cost_micros(prompt_tokens: int, max_completion_tokens: int, price: Price) -> int:
    """Upper estimate before the call: no cache hits, the whole completion budget spent."""
    return _round_per_million(
        max(prompt_tokens, 0) * price.input_micros
        + max(max_completion_tokens, 0) * price.output_micros
    )
