"""Block and opt-out lists in the pipelines: read from the config, checked before any work, applied
to stored samples, and counted for report.json.

Where each kind applies (README "Safety and consent"): URL and domain lists in ingest before any
request, and hash lists there on the downloaded bytes (``polite.Session.fetch_all``); on raw shards,
URL, domain and byte-hash lists when a sample is read and term and phash lists at decode
(``filters.sample.decode_sample``, in the scoring step, so a listed sample is never scored); on a
score run's stored samples (``scores``), every list but md5 and sha1 on the stored metadata
(``ReadStoredScoresThroughLists``). A list file is loaded once per worker process
(``filters.blocklist.load_list``: a sorted, memory-mapped array for hashes, URLs and domains).
"""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import apache_beam as beam
import pyarrow.parquet as pq
from curate.filters.blocklist import (
    CONSENT,
    KINDS,
    SAFETY,
    Blocklists,
    ListSpec,
    load_list,
)
from curate.filters.sample import check_lists

from curate import fs
from curate.config import ConfigError
from curate.embeddings import ReadStoredScores
from curate.outputs import DECISIONS, MAIN, split
from curate.records import decision

KEYS = {"safety.blocklists": SAFETY, "consent.optout": CONSENT}  # config key -> the lists' purpose
BYTES_ONLY = ("md5", "sha1")  # digests the stored metadata does not hold (it holds sha256)
STORED_KINDS = tuple(k for k in KINDS if k not in BYTES_ONLY)  # what applies to a score run's stored samples


def _spec_items(item: dict) -> dict:
    return {k: v for k, v in item.items() if v is not None}  # an unset key takes ListSpec's default


def from_config(cfg: dict) -> Blocklists:
    """The run's lists: block lists (``safety.blocklists``) first, then opt-out lists (``consent.optout``)."""
    return Blocklists([ListSpec.from_config(_spec_items(item), purpose)
                       for key, purpose in KEYS.items() for item in cfg.get(key) or ()])


def validate(cfg: dict, kinds: tuple[str, ...] | None = None, why: str = "") -> Blocklists:
    """Every list entry well formed, its file present and parsed, before any work (one-line
    ConfigError naming the key); paths made absolute in ``cfg``. Loading here also writes the .npy
    cache that worker processes then memory-map. ``kinds``: the kinds this run can apply (others are
    refused, saying ``why``)."""
    for key, purpose in KEYS.items():
        items = []
        for i, item in enumerate(cfg.get(key) or ()):
            item = {**item, "path": fs.abspath(str(item["path"]))}
            try:
                spec = ListSpec.from_config(_spec_items(item), purpose)
                if kinds is not None and spec.kind not in kinds:
                    raise ValueError(f"a {spec.kind} list cannot be applied here ({why})")
                load_list(spec)  # the whole file, once: a missing file or a bad line stops the run here
            except (OSError, ValueError) as e:
                raise ConfigError(f"config error: {key}[{i}]: {str(e).splitlines()[0]}") from None
            items.append(item)
        cfg[key] = items
    return from_config(cfg)


def fingerprint(cfg: dict) -> list[dict]:
    """Each list as it decides (path, kind, purpose, language, radius and the file's sha256): what a
    checkpoint of decisions made with the lists must match to be reused (curate.resume)."""
    return [{k: v for k, v in d.items() if k != "entries"} for d in from_config(cfg).describe()]


class CheckLists(beam.DoFn):
    """A stored sample against the lists (``filters.sample.check_lists``): on (MAIN) or a decision
    row (DECISIONS) whose stage is where the matching list's kind is first possible."""

    def __init__(self, lists: Blocklists):
        self._lists = lists  # pickles as its specs; each worker loads the files once (load_list)

    def process(self, sample):
        verdict = check_lists(sample, self._lists)
        if verdict is None:
            yield MAIN, sample
        else:
            yield DECISIONS, decision(verdict.sample, False, verdict.stage, verdict.reason, detail=verdict.detail)


class ReadStoredScoresThroughLists(beam.PTransform):
    """A score run's stored samples with this run's lists applied to their metadata: .samples and
    .decisions (the score run's unscored rows, which include what its own lists dropped, and the
    samples listed now)."""

    def __init__(self, run_dir: str, lists: Blocklists):
        super().__init__()
        self._run_dir, self._lists = run_dir, lists

    def expand(self, pbegin):
        stored = pbegin | "ReadStoredScores" >> ReadStoredScores(self._run_dir)
        if not self._lists:
            return stored
        checked = split(stored.samples | "CheckLists" >> beam.ParDo(CheckLists(self._lists)), "CheckLists", "samples")
        return SimpleNamespace(samples=checked.samples,
                               decisions=(stored.decisions, checked.decisions) | "Decisions" >> beam.Flatten())


def match_counts(decisions_dir: str, lists: Blocklists) -> list[int]:
    """Per list, in order: the decision rows it removed, told apart by reason and by the list file
    that ``detail`` names (``Match.detail``: "KIND list PATH: entry")."""
    counts: Counter = Counter()
    for path in fs.glob(fs.join(decisions_dir, "*.parquet")):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["reason", "detail"])
        for reason, detail in zip(table.column("reason").to_pylist(), table.column("detail").to_pylist()):
            if reason is not None and detail:
                counts[(reason, detail)] += 1
    out = []
    for spec in lists.specs:
        needle = f"{spec.kind} list {spec.path}: "
        out.append(sum(n for (reason, detail), n in counts.items() if reason == spec.reason and needle in detail))
    return out


def report_section(cfg: dict) -> dict:
    """report.json's ``lists``: per list file its path, kind, purpose, reason, sha256, distinct
    entries and the samples it removed in this run (counted from the decisions)."""
    lists = from_config(cfg)
    if not lists:
        return {}
    counts = match_counts(fs.join(cfg["output"], "decisions"), lists)
    return {"lists": [{**d, "matches": n} for d, n in zip(lists.describe(), counts)]}
