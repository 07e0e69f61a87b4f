"""Embedding a catalog: one resumable engine over shards, here or on Ray (index embed, index build)."""
