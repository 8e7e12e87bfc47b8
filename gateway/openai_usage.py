"""OpenAI's `usage` object for the mesh's Usage: in completions, final chunks and errors."""

from __future__ import annotations

from imesh.v1 import events_pb2


def usage_object(usage: events_pb2.Usage) -> dict[str, object]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
