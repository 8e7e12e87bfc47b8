"""Token counts to integer micro-dollars, with the prices from config."""

from __future__ import annotations

from imesh.v1 import events_pb2
from router.config import Price

TOKENS_PER_PRICE_UNIT = 1_000_000
_HALF_UNIT = TOKENS_PER_PRICE_UNIT // 2


class Rates:
    """A Price as plain integers (micro-dollars per million tokens), converted once per
    deployment at config load: `Price`'s figures are Decimal properties, computed on
    every read. Duck-compatible with Price wherever a price is read here."""

    __slots__ = ("cached_input_micros", "input_micros", "output_micros")

    def __init__(self, price: Price) -> None:
        self.input_micros: int = price.input_micros
        self.output_micros: int = price.output_micros
        self.cached_input_micros: int = price.cached_input_micros

    def __repr__(self) -> str:
        return (
            f"Rates(input_micros={self.input_micros}, output_micros={self.output_micros}, "
            f"cached_input_micros={self.cached_input_micros})"
        )


def cost_micros(usage: events_pb2.Usage, price: Price | Rates) -> int:
    """What `usage` costs: uncached prompt at input price, cached prompt at cached price,
    completion (which already includes reasoning tokens) at output price.

    One rounding on the sum, so splitting a prompt into cached and uncached parts never
    costs a micro-dollar more than the exact figure rounded once (half up).
    """
    prompt = usage.prompt_tokens
    if prompt < 0:
        prompt = 0
    cached = usage.cached_tokens
    if cached < 0:
        cached = 0
    elif cached > prompt:
        cached = prompt
    completion = usage.completion_tokens
    if completion < 0:
        completion = 0
    return (
        (prompt - cached) * price.input_micros
        + cached * price.cached_input_micros
        + completion * price.output_micros
        + _HALF_UNIT
    ) // TOKENS_PER_PRICE_UNIT


def estimate_cost_micros(
    prompt_tokens: int, max_completion_tokens: int, price: Price | Rates
) -> int:
    """Upper estimate before the call: no cache hits, the whole completion budget spent."""
    return (
        (prompt_tokens if prompt_tokens > 0 else 0) * price.input_micros
        + (max_completion_tokens if max_completion_tokens > 0 else 0) * price.output_micros
        + _HALF_UNIT
    ) // TOKENS_PER_PRICE_UNIT
