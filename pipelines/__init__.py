"""Pipelines: one module per pipeline with build(pipeline, config); what each one is, takes and writes
(description, config schema, outputs) is in specs.py, which imports no Beam."""
