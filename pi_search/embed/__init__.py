"""Embedding a catalog into shards on one machine or on a Ray cluster (``pi-search index embed``)."""
