"""UsageEvent: what one attempt spent, as it travels to the usage stream and the rollup."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One attempt (winner, hedge loser, retried failure or broken stream) of one request.

    `idempotency_key` is unique per attempt, so a replayed or duplicated event is counted
    once. `ttft_ms` is -1 when no token arrived.
    """

    idempotency_key: str
    at: float  # wall-clock seconds when the attempt ended
    tenant: str
    key_id: str
    request_id: str
    attempt: int
    hedge: bool
    model: str
    deployment: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int
    latency_ms: int
    ttft_ms: int

    @property
    def day(self) -> str:
        return dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y-%m-%d")

    @property
    def failed(self) -> bool:
        return self.outcome != "success"

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for a Redis Stream entry."""
        return {k: _encode(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, data: dict[bytes, bytes] | dict[str, str]) -> UsageEvent:
        text = {_str(k): _str(v) for k, v in data.items()}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = text[f.name]
            if f.type == "int":
                values[f.name] = int(raw)
            elif f.type == "float":
                values[f.name] = float(raw)
            elif f.type == "bool":
                values[f.name] = raw == "1"
            else:
                values[f.name] = raw
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_fields(), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> UsageEvent:
        data: dict[str, str] = json.loads(line)
        return cls.from_fields(data)


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
