"""The pipelines' default configs (NAME.yaml), installed as package data of curate."""
