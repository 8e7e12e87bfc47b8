"""Priority policy: config order, first listed first."""

from __future__ import annotations

from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.base import TargetT


class Priority:
    name = "priority"

    def rank(self, candidates: Sequence[TargetT], request: chat_pb2.ChatInput) -> list[TargetT]:
        return list(candidates)
