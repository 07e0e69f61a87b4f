"""Offline tools (benchmark generator, evaluation); never imported by the daemon."""
