"""Exports of curated shards for the four VLM families (one module per format)."""
