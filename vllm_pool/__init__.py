"""The self-hosted vLLM pool."""
