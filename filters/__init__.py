"""Filters: per-sample checks (pure functions) and corpus-wide steps (dedup), tested without Beam."""
