"""The contract's bounds on one ChatInput: every router holds requests to them, and the REST
edge refuses earlier with the same numbers."""

from __future__ import annotations

# OpenAI's limits, so a request valid here is valid at every provider the mesh translates to.
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
# Bounds on a request's shape, checked before anything walks it: validation, planning and
# token estimation run on the event loop and cost about 1 µs per part.
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 4096
