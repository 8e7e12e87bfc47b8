"""Tenants, API keys, limits, quotas and usage accounting, shared through Redis (or kept in
process when no Redis is configured)."""
