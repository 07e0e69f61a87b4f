"""Helpers the benchmarks share: a real daemon to measure, slow clients, streamed synthetic embeddings."""
