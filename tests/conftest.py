"""Fixtures every test package shares: the local stand-ins, started on free ports."""

pytest_plugins = ["docbus.testing"]
