"""OUT/report.html: what a run cut and kept, seen at a glance, in one self-contained file.

Built from ``report.json`` and ``OUT/decisions`` alone (no model, no pipeline), plus the few input
samples shown as thumbnails, read back from the input shards the decisions name (``source_shard``,
``source_index``). One streaming pass over the decisions keeps bounded state (``Digest``):
fixed-bin score histograms, counts per (language, reason), and per gallery the k best candidates
by a rule that does not depend on file or row order (a seeded hash of the sample's input position,
or its distance to the cut). Memory grows with the number of languages, reasons and galleries,
never with the number of decisions; a second pass reads only the rows of the few samples kept in
place of the largest duplicate groups.

The page makes no request: CSS is inline, charts are inline SVG drawn here, thumbnails are small
``data:`` JPEGs, there is no script, and its Content-Security-Policy forbids anything else.
Same report.json, decisions, input and seed -> the same bytes.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import fs, records

log = logging.getLogger("curate")

REPORT_HTML = "report.html"
# Histogram bins: scores are stored to 4 decimals (records.SCORE_DECIMALS), so bins counted in
# 1e-4 ticks are exact: a score of 0.6 falls in [0.60, 0.61), never in the bin below by rounding.
TICKS, BIN_TICKS, LOW = 10_000, 100, -1.0
BINS = int(2 * TICKS / BIN_TICKS)  # cosine in [-1, 1], bins of 0.01
KEPT, CUT, OTHER = 0, 1, 2  # histogram series: kept, dropped by the score rule, dropped for another reason
SERIES = (("kept", "#3a8a46"), ("below the cut", "#d04a3a"), ("dropped for another reason", "#9aa3ad"))
SCORE_REASONS = ("low_clip_score", "outside_top_fraction")  # filters.basic.LOW_CLIP_SCORE, filters.select
# Gallery sizes: what one page shows, hence the bound on the state kept while streaming.
REASON_SAMPLES, KEPT_SAMPLES, BOUNDARY_SAMPLES = 8, 8, 5
LANGUAGES_SHOWN, LANGUAGE_ROWS, GROUPS_SHOWN, GROUP_MEMBERS = 8, 20, 8, 5
THUMB_PX = 112
MAX_PREVIEW_PIXELS = 50_000_000  # a larger image is not decoded for a thumbnail
BATCH_ROWS = 65_536
STAGE_ORDER = ("ingest", *records.STAGES, "export")  # ingest's and the exports' rows around the pipeline's
COLUMNS = ("key", "source_shard", "source_index", "kept", "reason", "stage", "detail", "width", "height",
           "language", "clip_score", "clip_threshold", "dup_group", "kept_instead", "dup_similarity",
           "dup_hash_distance")
NO_LANGUAGE = "(none)"
ENTRIES_SHOWN = 200  # metadata entries listed per language in the coverage section


class ReportError(Exception):
    """The folder cannot give a report (no report.json); the message is one line."""


# ---------------------------------------------------------------------------------------------
# Reading decisions in bounded batches

def decision_files(out: str) -> list[str]:
    return sorted(fs.glob(fs.join(out, "decisions", "*.parquet")))


def iter_decisions(out: str, columns=COLUMNS, where=None):
    """RecordBatches of OUT/decisions (files in name order, at most BATCH_ROWS rows each), with the
    ``columns`` a file has; ``where(batch) -> boolean mask`` keeps only matching rows."""
    for path in decision_files(out):
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
                if where is not None:
                    batch = batch.filter(where(batch))
                if batch.num_rows:
                    yield batch


def _codes(column: pa.Array) -> tuple[np.ndarray, list]:
    """A string column as (codes, values): ``values[codes[i]]`` is row i's value; code -1 is null."""
    encoded = pc.dictionary_encode(column)
    return encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _floats(column: pa.Array) -> np.ndarray:
    return column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _ticks(values: np.ndarray) -> np.ndarray:
    """Scores as integer 1e-4 ticks above -1 (exact for stored scores; NaN rows must be masked out)."""
    return np.rint((np.nan_to_num(values) - LOW) * TICKS).astype(np.int64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea, Flood 2014): a cheap, well-spread 64-bit mix, vectorised."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_rank(seed: int, shard_names: list[str], shard_codes: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random rank per row from its input position (the shard's file name and the
    position in it): the same sample ranks the same whatever the order the rows are streamed in, so
    "the k smallest ranks" is a reproducible uniform sample (bottom-k sampling)."""
    shard_hash = np.array([int.from_bytes(hashlib.blake2b(fs.basename(s or "").encode(), digest_size=8).digest(),
                                          "little") for s in shard_names] or [0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        position = indices.astype(np.int64).astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        return _mix64(shard_hash[np.maximum(shard_codes, 0)] ^ _mix64(position))


# ---------------------------------------------------------------------------------------------
# The streamed digest

@dataclass
class Best:
    """The ``k`` rows with the smallest sort keys seen so far (bounded: k rows)."""
    k: int
    items: list = field(default_factory=list)  # (sort key, row dict)

    def offer(self, batch: pa.RecordBatch, idx: np.ndarray, keys: list[tuple]) -> None:
        """Offer rows ``idx`` of ``batch`` with their sort keys; only the best k of them are materialised."""
        if not len(idx):
            return
        order = sorted(range(len(idx)), key=keys.__getitem__)[:self.k]
        if self.items and len(self.items) >= self.k and keys[order[0]] >= self.items[-1][0]:
            return
        rows = batch.take(pa.array(idx[order])).to_pylist()
        self.items = sorted([*self.items, *zip([keys[i] for i in order], rows)], key=lambda kv: kv[0])[:self.k]

    @property
    def rows(self) -> list[dict]:
        return [row for _, row in self.items]


def _smallest(idx: np.ndarray, primary: np.ndarray, rank: np.ndarray, k: int) -> tuple[np.ndarray, list]:
    """The at most k rows of ``idx`` with the smallest (primary, rank), and their keys."""
    if len(idx) > k:
        order = np.lexsort((rank[idx], primary[idx]))[:k]
        idx = idx[order]
    return idx, list(zip(primary[idx].tolist(), rank[idx].tolist()))


@dataclass(frozen=True)
class _Columns:
    """One batch of decision rows as arrays: string columns as codes (-1: null, which indexes the
    last entry of the values list: NO_LANGUAGE, or None), scores as floats (NaN: null)."""
    batch: pa.RecordBatch
    sample: np.ndarray      # a sample's row (shard-level rows have source_index -1)
    kept: np.ndarray
    dropped: np.ndarray     # a sample's row, not kept
    cut: np.ndarray         # dropped by the score rule
    scored: np.ndarray      # a sample's row with a score
    has_cut: np.ndarray     # scored, and compared with a threshold
    score: np.ndarray
    threshold: np.ndarray
    rank: np.ndarray        # sample_rank
    reason_code: np.ndarray
    reasons: list
    stage_code: np.ndarray
    stages: list
    lang_code: np.ndarray
    languages: list

    @classmethod
    def of(cls, batch: pa.RecordBatch, seed: int) -> _Columns:
        n = batch.num_rows
        col = dict(zip(batch.schema.names, batch.columns))
        source_index = col["source_index"].to_numpy(zero_copy_only=False)
        sample = source_index >= 0
        kept = col["kept"].fill_null(False).to_numpy(zero_copy_only=False)
        reason_code, reasons = _codes(col["reason"])
        stage_code, stages = _codes(col["stage"])
        lang_code, languages = _codes(col.get("language", pa.nulls(n, pa.string())))
        shard_code, shards = _codes(col["source_shard"])
        score = _floats(col["clip_score"]) if "clip_score" in col else np.full(n, np.nan)
        threshold = _floats(col["clip_threshold"]) if "clip_threshold" in col else np.full(n, np.nan)
        scored = sample & ~np.isnan(score)
        return cls(batch=batch, sample=sample, kept=kept, dropped=sample & ~kept,
                   cut=np.isin(reason_code, [i for i, r in enumerate(reasons) if r in SCORE_REASONS]),
                   scored=scored, has_cut=scored & ~np.isnan(threshold), score=score, threshold=threshold,
                   rank=sample_rank(seed, shards, shard_code, source_index),
                   reason_code=reason_code, reasons=[*reasons, None], stage_code=stage_code, stages=[*stages, None],
                   lang_code=lang_code, languages=[NO_LANGUAGE if v is None else v for v in languages] + [NO_LANGUAGE])


@dataclass
class Digest:
    """Everything the page shows that the decisions hold, gathered in one pass (``add``)."""
    seed: int = 0
    groups: tuple[str, ...] = ()  # the duplicate groups to show (report.json's largest)
    histograms: dict = field(default_factory=dict)    # language -> int64[3, BINS]
    thresholds: dict = field(default_factory=dict)    # language -> Counter(threshold ticks)
    by_language: Counter = field(default_factory=Counter)  # (language, reason or None) -> rows
    reason_stage: Counter = field(default_factory=Counter)  # (reason, stage) -> rows
    above: dict = field(default_factory=dict)         # language -> Best: passed the cut, nearest first
    below: dict = field(default_factory=dict)         # language -> Best: below the cut, nearest first
    by_reason: dict = field(default_factory=dict)     # reason -> Best by seeded rank
    kept: Best = field(default_factory=lambda: Best(KEPT_SAMPLES))
    shard_rows: Best = field(default_factory=lambda: Best(REASON_SAMPLES))  # unreadable tars
    members: dict = field(default_factory=dict)       # duplicate group -> Best by seeded rank
    group_kept: dict = field(default_factory=dict)    # duplicate group -> the kept key its members name
    kept_rows: dict = field(default_factory=dict)     # key -> its kept row (second pass)

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one batch of decision rows into the digest."""
        c = _Columns.of(batch, self.seed)
        self._count(c)
        self._histogram(c)
        self._nearest_cut(c)
        self._samples(c)
        self._groups(c)

    def _count(self, c: _Columns) -> None:
        """Rows per (language, reason) and per (reason, stage), over sample rows."""
        for (lc, rc), count in _pair_counts(c.lang_code[c.sample], c.reason_code[c.sample]):
            self.by_language[(c.languages[lc], c.reasons[rc])] += count
        for (rc, sc), count in _pair_counts(c.reason_code[c.dropped], c.stage_code[c.dropped]):
            self.reason_stage[(c.reasons[rc], c.stages[sc])] += count

    def _histogram(self, c: _Columns) -> None:
        """Score histograms (kept / below the cut / dropped otherwise) and the cuts applied, per language."""
        series = np.where(c.kept, KEPT, np.where(c.cut, CUT, OTHER))
        bins = np.clip(_ticks(c.score) // BIN_TICKS, 0, BINS - 1)
        for lc in np.unique(c.lang_code[c.scored]):
            rows = c.scored & (c.lang_code == lc)
            hist = self.histograms.setdefault(c.languages[lc], np.zeros((3, BINS), np.int64))
            hist += np.bincount(series[rows] * BINS + bins[rows], minlength=3 * BINS).reshape(3, BINS)
            cuts = self.thresholds.setdefault(c.languages[lc], Counter())
            for tick, count in zip(*np.unique(_ticks(c.threshold[rows & c.has_cut]), return_counts=True)):
                cuts[int(tick)] += int(count)

    def _nearest_cut(self, c: _Columns) -> None:
        """Per language, the samples nearest the cut on either side (ties: by seeded rank)."""
        distance = np.abs(_ticks(c.score) - _ticks(c.threshold))
        for lc in np.unique(c.lang_code[c.has_cut]):
            rows = c.has_cut & (c.lang_code == lc)
            for side, mask in ((self.above, rows & ~c.cut), (self.below, rows & c.cut)):
                idx, keys = _smallest(np.flatnonzero(mask), distance, c.rank, BOUNDARY_SAMPLES)
                side.setdefault(c.languages[lc], Best(BOUNDARY_SAMPLES)).offer(c.batch, idx, keys)

    def _samples(self, c: _Columns) -> None:
        """A seeded sample per drop reason, of kept samples, and of unreadable shards (shard-level rows)."""
        zeros = np.zeros(c.batch.num_rows, np.int64)
        for rc in np.unique(c.reason_code[c.dropped]):
            idx, keys = _smallest(np.flatnonzero(c.dropped & (c.reason_code == rc)), zeros, c.rank, REASON_SAMPLES)
            self.by_reason.setdefault(c.reasons[rc], Best(REASON_SAMPLES)).offer(c.batch, idx, keys)
        self.kept.offer(c.batch, *_smallest(np.flatnonzero(c.sample & c.kept), zeros, c.rank, KEPT_SAMPLES))
        self.shard_rows.offer(c.batch, *_smallest(np.flatnonzero(~c.sample), zeros, c.rank, REASON_SAMPLES))

    def _groups(self, c: _Columns) -> None:
        """Members of the duplicate groups shown (a seeded sample of each) and the key each one names."""
        if not self.groups or "dup_group" not in c.batch.schema.names:
            return
        group_code, names = _codes(c.batch.column("dup_group"))
        wanted = [i for i, g in enumerate(names) if g in self.groups]
        instead = c.batch.column("kept_instead").to_pylist() if wanted else []
        zeros = np.zeros(c.batch.num_rows, np.int64)
        for gc in wanted:
            idx = np.flatnonzero(c.dropped & (group_code == gc))
            if len(idx):
                self.group_kept.setdefault(names[gc], instead[idx[0]])
            self.members.setdefault(names[gc], Best(GROUP_MEMBERS)).offer(
                c.batch, *_smallest(idx, zeros, c.rank, GROUP_MEMBERS))

    def wanted_kept_keys(self) -> set[str]:
        return {k for k in self.group_kept.values() if k}

    def add_kept_rows(self, batch: pa.RecordBatch) -> None:
        """Second pass: rows of the samples kept in place of the groups shown."""
        for row in batch.to_pylist():
            if row["kept"]:
                self.kept_rows.setdefault(row["key"], row)


def _pair_counts(a: np.ndarray, b: np.ndarray):
    """((a, b), count) for each distinct pair of codes (-1 = null)."""
    if not len(a):
        return []
    width = int(b.max()) + 2
    pairs, counts = np.unique((a.astype(np.int64) + 1) * width + (b + 1), return_counts=True)
    return [((int(p // width) - 1, int(p % width) - 1), int(c)) for p, c in zip(pairs, counts)]


def digest(out: str, report: dict, seed: int = 0) -> Digest:
    """Stream OUT/decisions once (and the few kept rows of the groups shown once more)."""
    groups = tuple(list(report["counts"].get("largest_duplicate_groups", {}))[:GROUPS_SHOWN])
    d = Digest(seed=seed, groups=groups)
    for batch in iter_decisions(out):
        d.add(batch)
    wanted = d.wanted_kept_keys()
    if wanted:
        keys = pa.array(sorted(wanted))
        for batch in iter_decisions(out, where=lambda b: pc.is_in(b.column("key"), value_set=keys)):
            d.add_kept_rows(batch)
    return d


# ---------------------------------------------------------------------------------------------
# Thumbnails from the input shards

@dataclass(frozen=True)
class Preview:
    """What the input shard holds for one sample: a thumbnail (data: URI) or why there is none, and
    the caption."""
    image: str | None
    note: str | None
    caption: str | None


def image_of(fields: dict) -> tuple[str, bytes] | None:
    """(extension, bytes) of a sample's image member, the first present in curate.io.IMAGE_EXTS order
    (as the reader picks it)."""
    from curate.io import IMAGE_EXTS

    ext = next((e for e in IMAGE_EXTS if fields.get(e)), None)
    return None if ext is None else (ext, fields[ext])


def thumbnail(data: bytes, px: int = THUMB_PX) -> str | None:
    """A small JPEG of the image as a data: URI, or None if Pillow cannot decode it here. JPEGs are
    decoded at reduced size (``Image.draft``); an image over MAX_PREVIEW_PIXELS is not decoded."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PREVIEW_PIXELS:
                    return None
                im.draft("RGB", (2 * px, 2 * px))
                small = ImageOps.exif_transpose(im).convert("RGB")
        small.thumbnail((px, px))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=70, optimize=True)
    except Exception:  # noqa: BLE001 - any decoder failure means "no preview", which the page says
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def previews(rows: list[dict]) -> dict[tuple[str, int], Preview]:
    """A Preview per (source_shard, source_index) of ``rows``, reading each input shard once, no
    further than its last wanted sample (curate.raw_shards.read_members)."""
    from curate.io import TarReadError, is_shard_name
    from curate.raw_shards import read_members

    wanted: dict[str, set[int]] = {}
    for r in rows:
        if r["source_index"] is not None and r["source_index"] >= 0 and r["source_shard"]:
            wanted.setdefault(r["source_shard"], set()).add(r["source_index"])
    found: dict[tuple[str, int], Preview] = {}
    for shard, indices in sorted(wanted.items()):
        if not is_shard_name(shard):  # ingest's rows name the URL table
            continue
        try:
            members = read_members(shard, indices)
        except (OSError, TarReadError) as e:
            log.warning("report.html: no previews from %s: %s", shard, e)
            continue
        for (path, index), fields in members.items():
            image = image_of(fields)
            caption = fields.get("txt", b"").decode("utf-8", "replace").strip() or None
            uri = thumbnail(image[1]) if image else None
            note = None if uri else ("no image member" if image is None else "does not decode")
            found[(path, index)] = Preview(uri, note, caption)
    return found


# ---------------------------------------------------------------------------------------------
# Rendering

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str:
    """A number as report.json holds it, with thousands separators (1,379; 12.4)."""
    return f"{value:,}"


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _json_value(report: dict, *path):
    """A number of report.json, marked with its path so that a reader (or a test) can check it."""
    value = report
    for part in path:
        value = value[part]
    return f'<span class="n" data-json="{_e(json.dumps(list(path)))}">{_e(_num(value))}</span>'


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(target, 1)
    mag = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1
    return float(next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw))


def histogram_svg(counts: np.ndarray, cuts: list[float], title: str, width: int = 640, height: int = 200) -> str:
    """Stacked bars of ``counts`` (int[3, BINS]: kept, below the cut, dropped otherwise) over the bins'
    score range that holds data (and the cuts), each cut drawn as a dashed line with its value."""
    total = counts.sum(axis=0)
    nonzero = np.flatnonzero(total)
    lo_bin, hi_bin = int(nonzero[0]), int(nonzero[-1]) + 1
    for c in cuts:
        b = round((c - LOW) * TICKS) // BIN_TICKS
        lo_bin, hi_bin = min(lo_bin, b), max(hi_bin, b + 1)
    lo_bin, hi_bin = max(0, lo_bin - 2), min(BINS, hi_bin + 2)
    lo, hi = LOW + lo_bin * BIN_TICKS / TICKS, LOW + hi_bin * BIN_TICKS / TICKS
    ml, mr, mt, mb = 44, 10, 22, 30
    pw, ph = width - ml - mr, height - mt - mb
    ymax = max(int(total.max()), 1)

    def x(v: float) -> float:
        return ml + (v - lo) / (hi - lo) * pw

    def y(v: float) -> float:
        return mt + ph - v / ymax * ph

    bar = pw / (hi_bin - lo_bin)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
              f'width="{width}" height="{height}" role="img"><title>{_e(title)}</title>'),
             f'<text x="{ml}" y="14" class="t">{_e(title)}</text>']
    base = np.zeros(hi_bin - lo_bin, np.int64)
    for s, (_label, colour) in enumerate(SERIES):
        path = []
        for i, b in enumerate(range(lo_bin, hi_bin)):
            v = int(counts[s, b])
            if v:
                top, bottom = y(base[i] + v), y(base[i])
                path.append(f"M{ml + i * bar:.1f} {top:.1f}h{bar:.1f}V{bottom:.1f}h{-bar:.1f}Z")
        base += counts[s, lo_bin:hi_bin]
        if path:
            parts.append(f'<path fill="{colour}" d="{"".join(path)}"/>')
    parts.append(f'<path class="axis" d="M{ml} {mt}V{mt + ph}H{ml + pw}"/>')
    step = _nice_step(hi - lo)
    tick = np.ceil(lo / step) * step
    while tick <= hi + 1e-9:
        parts.append(f'<path class="axis" d="M{x(tick):.1f} {mt + ph}v4"/>'
                     f'<text x="{x(tick):.1f}" y="{mt + ph + 16}" class="xl">{round(tick, 4):g}</text>')
        tick += step
    for v in sorted({0, ymax // 2, ymax}):
        parts.append(f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" class="yl">{v:,}</text>')
    for c in cuts:
        parts.append(f'<path class="cut" d="M{x(c):.1f} {mt}V{mt + ph}"/>'
                     f'<text x="{x(c) + 4:.1f}" y="{mt + 10}" class="cl">cut {c:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(counts: np.ndarray) -> str:
    """The series that hold samples."""
    return '<p class="legend">' + "".join(f'<span><i style="background:{c}"></i>{_e(label)}</span>'
                                          for (label, c), n in zip(SERIES, counts.sum(axis=1)) if n) + "</p>"


def _card(row: dict, preview: Preview | None, extra: str = "", cls: str = "") -> str:
    status = "kept" if row["kept"] else (row["reason"] or "dropped")
    if preview and preview.image:
        img = f'<img src="{preview.image}" alt="{_e(row["key"])}">'
    else:
        why = preview.note if preview else "input sample not readable here"
        img = f'<div class="noimg">no preview<br>({_e(why)})</div>'
    score = row.get("clip_score")
    lines = [f'<b title="{_e(row["source_shard"])} #{row["source_index"]}">{_e(row["key"] or "(shard)")}</b>',
             f'<span class="tag {"k" if row["kept"] else "d"}">{_e(status)}</span>']
    if score is not None:
        lines.append(f'<span class="score">score {score:.4f}</span>')
    if extra:
        lines.append(extra)
    caption = preview.caption if preview else None
    if caption:
        short = caption if len(caption) <= 110 else caption[:107] + "..."
        lines.append(f'<q title="{_e(caption)}">{_e(short)}</q>')
    elif row.get("detail"):
        lines.append(f'<small>{_e(row["detail"][:160])}</small>')
    return f'<figure class="card {cls}">{img}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def _gallery(rows: list[dict], shown: dict, extra=lambda r: "") -> str:
    return '<div class="gallery">' + "".join(
        _card(r, shown.get((r["source_shard"], r["source_index"])), extra(r)) for r in rows) + "</div>"


def _stage_order(stage: str) -> tuple:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def _kept_word(report: dict) -> str:
    """What a sample that was not dropped is, as the closing summary says it (curate.report.summary)."""
    return "scored" if report["pipeline"] == "score" else "kept"


def _funnel(report: dict) -> str:
    c = report["counts"]
    total = c["input"]
    rows = [(f'<tr><th>input</th><td></td><td>{_json_value(report, "counts", "input")}</td>'
             f'<td>100%</td><td><div class="bar" style="width:100%"></div></td></tr>')]
    left = total
    for stage in sorted(c["dropped_by_stage"], key=_stage_order):
        n = c["dropped_by_stage"][stage]
        left -= n
        rows.append(f'<tr><th>{_e(stage)}</th><td>-{_json_value(report, "counts", "dropped_by_stage", stage)}</td>'
                    f'<td>{left:,}</td><td>{_pct(left, total)}</td>'
                    f'<td><div class="bar" style="width:{100 * left / total if total else 0:.2f}%"></div></td></tr>')
    kept = _kept_word(report)
    rows.append(f'<tr class="total"><th>{kept}</th><td></td><td>{_json_value(report, "counts", "kept")}</td>'
                f'<td>{_pct(c["kept"], total)}</td>'
                f'<td><div class="bar k" style="width:{100 * c["kept"] / total if total else 0:.2f}%"></div></td></tr>')
    return ('<table class="funnel"><tr><th>step</th><th>dropped</th><th>left</th><th>share of input</th><th></th></tr>'
            + "".join(rows) + "</table>")


def _reasons(report: dict, d: Digest) -> str:
    c = report["counts"]
    stage_of: dict[str, str] = {}
    for (reason, stage), _ in sorted(d.reason_stage.items(), key=lambda kv: -kv[1]):
        stage_of.setdefault(reason, stage)
    rows = "".join(
        f'<tr><th><a href="#reason-{_e(reason)}">{_e(reason)}</a></th><td>{_e(stage_of.get(reason, ""))}</td>'
        f'<td>{_json_value(report, "counts", "dropped_by_reason", reason)}</td><td>{_pct(n, c["input"])}</td>'
        f'<td>{_pct(n, c["dropped"])}</td></tr>' for reason, n in c["dropped_by_reason"].items())
    return ('<table><tr><th>reason</th><th>stage</th><th>dropped</th><th>of input</th><th>of dropped</th></tr>'
            + rows + f'<tr class="total"><th>all</th><td></td><td>{_json_value(report, "counts", "dropped")}</td>'
            f'<td>{_pct(c["dropped"], c["input"])}</td><td></td></tr></table>')


def _languages(report: dict, d: Digest) -> str:
    reasons = list(report["counts"]["dropped_by_reason"])
    totals: Counter = Counter()
    for (lang, _reason), n in d.by_language.items():
        totals[lang] += n
    langs = sorted(totals, key=lambda lang: (-totals[lang], lang))
    shown, rest = langs[:LANGUAGE_ROWS], langs[LANGUAGE_ROWS:]
    head = "".join(f"<th>{_e(r)}</th>" for r in reasons)

    def row(label, members):
        n = sum(totals[m] for m in members)
        kept = sum(d.by_language[(m, None)] for m in members)
        cells = "".join(f"<td>{sum(d.by_language[(m, r)] for m in members) or ''}</td>" for r in reasons)
        return f"<tr><th>{_e(label)}</th><td>{n:,}</td><td>{kept:,}</td><td>{_pct(kept, n)}</td>{cells}</tr>"

    body = "".join(row(lang, [lang]) for lang in shown)
    if rest:
        body += row(f"{len(rest)} other languages", rest)
    return (f'<div class="wide"><table class="small"><tr><th>language</th><th>input</th><th>kept</th><th>kept share</th>'
            f"{head}</tr>{body}</table></div>")


def _coverage(coverage: dict) -> str:
    """report.json's coverage audit (curate/coverage.py): a row per language, and each language's
    entries with their counts (input -> kept) behind a fold, lost ones first, then the most named, at
    most ENTRIES_SHOWN a language (MetaCLIP's lists hold 500k entries; report.json has them all)."""
    balanced = coverage["balanced"]
    first, last = ("before_balancing", "after_balancing") if balanced else ("input", "kept")
    rows, folds = [], []
    for lang, c in coverage["languages"].items():
        ratio = " → ".join("-" if c["head_to_tail"][p] is None else f"{c['head_to_tail'][p]:.1f}" for p in (first, last))
        lost = ", ".join(c["lost"][:8]) + (f" (+{len(c['lost']) - 8})" if len(c["lost"]) > 8 else "")
        rows.append(f"<tr><th>{_e(lang)}</th><td>{c['samples']['input']:,}</td><td>{c['samples']['kept']:,}</td>"
                    f"<td>{c['entries_present']['input']}</td><td>{c['entries_present']['kept']}</td>"
                    f"<td>{_e(ratio)}</td><td>{_e(c.get('cap', ''))}</td><td>{_e(lost)}</td></tr>")
        named = sorted(((e, n) for e, n in c["entries"].items() if n["input"]),
                       key=lambda en: (en[1]["kept"] > 0, -en[1]["input"], en[0]))
        more = f" (+{len(named) - ENTRIES_SHOWN:,} more in report.json)" if len(named) > ENTRIES_SHOWN else ""
        folds.append(f"<details><summary>{_e(lang)}: {len(named)} entries named</summary><p class=\"sub\">"
                     + ", ".join(f"{_e(e)} {n['input']:,} → {n['kept']:,}" for e, n in named[:ENTRIES_SHOWN])
                     + more + "</p></details>")
    unlisted = ", ".join(f"{_e(k)} {v:,}" for k, v in coverage["unlisted"].items())
    note = f'<p class="warn">{_e(coverage["caps_note"])}</p>' if coverage.get("caps_note") else ""
    return (f'<p class="sub">metadata entries the captions name, per language ({_e(coverage["metadata"])}); '
            f'head/tail {"before → after balancing" if balanced else "input → kept"}</p>{note}'
            '<div class="wide"><table class="small"><tr><th>language</th><th>samples in</th><th>kept</th>'
            "<th>entries in</th><th>kept</th><th>head/tail</th><th>cap</th><th>lost entries</th></tr>"
            + "".join(rows) + "</table></div>" + "".join(folds)
            + (f'<p class="sub">no metadata list: {unlisted}</p>' if unlisted else ""))


def _cuts(counter: Counter) -> list[float]:
    """The thresholds applied, most used first (a few at most: one per language in mode language)."""
    return [t / TICKS + LOW for t, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:6]]


def _top_languages(d: Digest) -> list[str]:
    sizes = {lang: int(h.sum()) for lang, h in d.histograms.items()}
    return sorted(sizes, key=lambda lang: (-sizes[lang], lang))[:LANGUAGES_SHOWN]


def _histograms(d: Digest) -> str:
    overall = sum(d.histograms.values())
    every = Counter()
    for c in d.thresholds.values():
        every.update(c)
    charts = [histogram_svg(overall, _cuts(every), f"all languages ({int(overall.sum()):,} scored)")]
    for lang in _top_languages(d):
        h = d.histograms[lang]
        charts.append(histogram_svg(h, _cuts(d.thresholds.get(lang, Counter()))[:1],
                                    f"{lang} ({int(h.sum()):,} scored)", width=420, height=170))
    return _legend(overall) + '<div class="charts">' + "".join(charts) + "</div>"


def _boundary(d: Digest, shown: dict) -> str:
    parts = []
    for lang in _top_languages(d):
        above, below = d.above.get(lang), d.below.get(lang)
        if not (above and above.items) and not (below and below.items):
            continue
        cut = _cuts(d.thresholds.get(lang, Counter()))
        parts.append(f"<h3>{_e(lang)}{f' (cut {cut[0]:g})' if cut else ''}</h3>")
        if above and above.items:
            parts.append('<p class="sub">just above the cut (kept by the score; a later step may drop them)</p>'
                         + _gallery(above.rows, shown))
        if below and below.items:
            parts.append('<p class="sub">just below the cut (dropped)</p>' + _gallery(below.rows, shown))
    return "".join(parts)


def _dup_measures(row: dict) -> str:
    bits = []
    if row.get("dup_similarity") is not None:
        bits.append(f"cos {row['dup_similarity']:.4f}")
    if row.get("dup_hash_distance") is not None:
        bits.append(f"hash distance {row['dup_hash_distance']}")
    if not bits and (row.get("dup_group") or "").startswith("sha256:"):
        bits.append("same image bytes")
    return f'<span class="score">{_e(" · ".join(bits))}</span>' if bits else ""


def _groups(report: dict, d: Digest, shown: dict) -> str:
    parts = []
    for group in d.groups:
        size = report["counts"]["largest_duplicate_groups"][group]
        kept_key = d.group_kept.get(group)
        kept_row = d.kept_rows.get(kept_key) if kept_key else None
        members = d.members.get(group, Best(GROUP_MEMBERS)).rows
        members.sort(key=lambda r: (-(r.get("dup_similarity") or 0), r["key"]))
        more = size - 1 - len(members)
        if kept_row is not None:
            first = _card(kept_row, shown.get((kept_row["source_shard"], kept_row["source_index"])), cls="keeper")
        else:
            first = f'<div class="card keeper noimg">kept: {_e(kept_key or group.split(":", 1)[-1])}</div>'
        cards = "".join(_card(r, shown.get((r["source_shard"], r["source_index"])), _dup_measures(r))
                        for r in members)
        parts.append(f'<div class="group"><h3>{_e(group)}: '
                     f'{_json_value(report, "counts", "largest_duplicate_groups", group)} samples'
                     f'{f", {more:,} more dropped not shown" if more > 0 else ""}</h3>'
                     f'<div class="gallery">{first}{cards}</div></div>')
    return '<div class="groups">' + "".join(parts) + "</div>"


def _times(report: dict) -> str:
    t = report["time"]
    wall, cpu = t.get("stage_wall_seconds", {}), t.get("stage_cpu_seconds", {})
    top = max([*wall.values(), *cpu.values(), 1e-9])
    rows = "".join(
        f'<tr><th>{_e(s)}</th><td>{_json_value(report, "time", "stage_wall_seconds", s) if s in wall else ""}</td>'
        f'<td>{_json_value(report, "time", "stage_cpu_seconds", s) if s in cpu else ""}</td>'
        f'<td><div class="bar" style="width:{100 * wall.get(s, 0) / top:.1f}%"></div></td></tr>'
        for s in sorted({*wall, *cpu}, key=lambda s: -wall.get(s, 0)))
    head = (f'<p>wall {_json_value(report, "time", "wall_seconds")} s'
            + (f', CPU {_json_value(report, "time", "cpu_seconds")} s' if t.get("cpu_seconds") is not None else "")
            + (f', {_json_value(report, "time", "samples_per_second")} samples/s'
               if t.get("samples_per_second") is not None else "") + f", runner {_e(report.get('runner', '?'))}</p>")
    if not rows:
        return head + "<p>This runner reports no time per stage.</p>"
    return (head + '<p class="sub">per stage, summed over workers (README "What the output folder holds")</p>'
            '<table><tr><th>stage</th><th>wall s</th><th>CPU s</th><th></th></tr>' + rows + "</table>")


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#1d2329}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5dae0}
h3{font-size:15px;margin:16px 0 6px}nav a{margin-right:12px}.sub{color:#5a6672;margin:4px 0}
table{border-collapse:collapse;margin:6px 0}th,td{padding:2px 10px;text-align:right;white-space:nowrap}
th{text-align:left;font-weight:600}tr.total th,tr.total td{border-top:1px solid #aab3bc}
table.small{font-size:12px}.wide{overflow-x:auto}
.funnel td:last-child{width:360px}.bar{height:12px;background:#7d93ab;min-width:1px}.bar.k{background:#3a8a46}
.big{display:flex;gap:28px;margin:10px 0}.big div{font-size:13px;color:#5a6672}.big b{display:block;font-size:24px;color:#1d2329}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart text{font-size:11px;fill:#333}.chart .t{font-weight:600}
.chart .axis{stroke:#666;fill:none}.chart .cut{stroke:#111;stroke-dasharray:4 3;fill:none}.chart .xl{text-anchor:middle}
.chart .yl{text-anchor:end}.legend span{margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{margin:0;width:150px;border:1px solid #d5dae0;border-radius:4px;padding:4px;font-size:11px;overflow-wrap:anywhere}
.groups{display:flex;flex-wrap:wrap;gap:6px 28px}.group h3{font-size:13px}.card.keeper{border:2px solid #3a8a46}.card img{display:block;max-width:140px;max-height:112px;margin:0 auto 4px}
.noimg{height:80px;display:flex;align-items:center;justify-content:center;text-align:center;background:#eef0f2;color:#5a6672;margin-bottom:4px}
.tag{padding:0 4px;border-radius:3px}.tag.k{background:#dcefdc}.tag.d{background:#f6dcd8}.score{color:#444}
q{color:#333}.warn{background:#fff4d6;padding:6px 10px;border-left:4px solid #e0a800}pre{background:#f4f6f8;padding:8px;overflow-x:auto;font-size:12px}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(report: dict, d: Digest, shown: dict, out: str) -> str:
    """The page, from report.json's content, the digest and the previews."""
    c = report["counts"]
    sections = []

    def section(anchor: str, title: str, body: str) -> None:
        sections.append((anchor, title, f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'))

    problems = c.get("conservation", {}).get("problems", [])
    alerts = [*report.get("warnings", []), *(f"conservation check failed: {p}" for p in problems)]
    if alerts:
        section("warnings", "Warnings", "".join(f'<p class="warn">{_e(w)}</p>' for w in alerts))
    section("funnel", "Funnel", _funnel(report))
    if c["dropped_by_reason"]:
        section("reasons", "Drop reasons", _reasons(report, d))
    if any(lang != NO_LANGUAGE for lang, _ in d.by_language):
        section("languages", "What each language lost", _languages(report, d))
    if report.get("coverage", {}).get("languages"):
        section("coverage", "Concept coverage", _coverage(report["coverage"]))
    if d.histograms:
        section("scores", "CLIP scores", _histograms(d))
    if any(b.items for b in [*d.above.values(), *d.below.values()]):
        section("boundary", "At the cut",
                '<p class="sub">per language, the samples nearest the score cut on each side</p>' + _boundary(d, shown))
    if d.groups:
        section("duplicates", "Largest duplicate groups",
                '<p class="sub">the kept sample (green border) beside the ones dropped as its duplicates</p>'
                + _groups(report, d, shown))
    if d.by_reason or d.shard_rows.items:
        body = "".join(f'<h3 id="reason-{_e(r)}">{_e(r)}</h3>{_gallery(d.by_reason[r].rows, shown)}'
                       for r in c["dropped_by_reason"] if r in d.by_reason)
        if d.shard_rows.items:
            body += "<h3>unreadable input shards</h3><ul>" + "".join(
                f"<li>{_e(r['source_shard'])}: {_e(r['detail'] or '')}</li>" for r in d.shard_rows.rows) + "</ul>"
        section("dropped", "Dropped samples by reason",
                f'<p class="sub">a seeded sample (seed {d.seed}) of up to {REASON_SAMPLES} per reason</p>' + body)
    if d.kept.items:
        section("kept", "Kept samples", f'<p class="sub">a seeded sample (seed {d.seed})</p>' + _gallery(d.kept.rows, shown))
    section("time", "Time", _times(report))
    section("config", "Config", "<details><summary>the settings of this run</summary><pre>"
            + _e(json.dumps(report.get("config", {}), indent=1, sort_keys=True, default=str)) + "</pre></details>")

    kept_word = _kept_word(report)
    big = (f'<div class="big"><div><b>{_json_value(report, "counts", "input")}</b>input samples</div>'
           f'<div><b>{_json_value(report, "counts", "kept")}</b>{kept_word} ({_pct(c["kept"], c["input"])})</div>'
           f'<div><b>{_json_value(report, "counts", "dropped")}</b>dropped</div>'
           + (f'<div><b>{_json_value(report, "shards", "count")}</b>curated shards</div>'
              if report.get("writes_shards") else "") + "</div>")
    nav = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections) + "</nav>"
    title = f"curate {report['pipeline']}: {fs.basename(out)}"
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width"><title>{_e(title)}</title><style>{CSS}</style></head>'
            f'<body><h1>{_e(report["pipeline"])} run</h1><p class="sub">{_e(out)}</p>{big}{nav}'
            + "".join(body for _, _, body in sections) + "</body></html>\n")


def build(out: str, report: dict | None = None, seed: int = 0) -> str:
    """The page for the run in ``out`` (report.json's content may be passed in)."""
    if report is None:
        path = fs.join(out, "report.json")
        if not fs.exists(path):
            raise ReportError(f"{out!r} holds no report.json: not the output folder of a completed curate run")
        report = json.loads(fs.read_bytes(path))
    d = digest(out, report, seed)
    rows = [*d.kept.rows, *d.kept_rows.values()]
    for bests in (d.above, d.below, d.by_reason, d.members):
        for best in bests.values():
            rows.extend(best.rows)
    return render(report, d, previews(rows), out)


def write(out: str, report: dict | None = None, seed: int = 0) -> str:
    """Write OUT/report.html (atomically); returns its path."""
    from curate.io import write_bytes

    path = fs.join(out, REPORT_HTML)
    write_bytes(path, build(out, report, seed).encode())
    return path


def write_after_run(out: str, report: dict) -> str | None:
    """The end of every pipeline run: write report.html beside report.json. The run's outputs and
    report.json are complete by now, so a page that cannot be made costs a warning, not the run."""
    try:
        path = write(out, report)
    except Exception as e:  # noqa: BLE001 - the curation itself succeeded; say why the page is missing
        log.warning("report.html not written: %s: %s (python -m curate.report %s retries)", type(e).__name__, e, out)
        return None
    log.info("report page: %s", path)
    return path
