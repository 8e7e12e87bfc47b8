"""Fake provider HTTP servers for adapter tests."""
