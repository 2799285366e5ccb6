"""Pipelines: one module per pipeline, each with DESCRIPTION, SCHEMA and build(pipeline, config)."""
