"""Ingest: URL + caption tables -> raw WebDataset shards in img2dataset's layout.

table.py reads the tables, guard.py decides what may be fetched, shard.py drives img2dataset's
Downloader, Resizer and WebDataset writer for one shard; pipelines/ingest.py distributes shards
with Beam.
"""
import os

# albumentations (imported by img2dataset's resizer) checks PyPI for updates at import otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
