"""The OpenAI-compatible REST/SSE edge."""
