"""Helpers shared by every test package: real servers started on free loopback ports."""
