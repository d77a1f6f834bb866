"""Kept for scripts that import specli.engine: the engine lives in specli.core.engine."""

from specli.core.engine import Done, Round, Stats, collect, speculative_generate

__all__ = ["Done", "Round", "Stats", "collect", "speculative_generate"]
