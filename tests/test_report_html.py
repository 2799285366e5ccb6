"""OUT/report.html opened in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
it loads with no console error and no network request, every image decodes, the numbers it shows
are report.json's, and it draws something. Plus the streamed digest's rules, without a browser."""
import io
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import report_corpus
from PIL import Image

from curate import html_report, progress, run
from curate import report as report_cli
from curate.records import DECISION_SCHEMA

BUILTIN_SAMPLES = 300


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """laion_filter on the built-in corpus (a few hundred samples)."""
    out = str(tmp_path_factory.mktemp("builtin"))
    return out, run.run(["--pipeline", "laion_filter", "--output", out,
                         "--set", f"sample_corpus.samples={BUILTIN_SAMPLES}"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """laion_filter on tests/report_corpus.py: two languages, a duplicate group, a decode failure."""
    folder = str(tmp_path_factory.mktemp("tiny"))
    raw = report_corpus.write(folder)
    out = os.path.join(folder, "out")
    return out, run.run(["--pipeline", "laion_filter", "--input", raw, "--output", out])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium not found: `apt-get install chromium` (README \"Seeing a run\")")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: str) -> dict:
    """Load ``path`` as a file:// page; what the page did and shows."""
    url = "file://" + os.path.abspath(path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = {"errors": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def route(r):  # every request is recorded; only the page itself is served
        if r.request.url == url:
            r.continue_()
        else:
            seen["requests"].append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page.goto(url, wait_until="load")
    seen["image_widths"] = page.evaluate(
        "Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth, () => 0)))")
    seen["numbers"] = page.evaluate(
        "[...document.querySelectorAll('[data-json]')].map(e => [JSON.parse(e.dataset.json), e.textContent])")
    seen["text"] = page.inner_text("body")
    seen["screenshot"] = page.screenshot(full_page=False)
    context.close()
    return seen


def check_page(seen: dict, report: dict) -> None:
    """The properties every report page has."""
    assert seen["errors"] == [] and seen["requests"] == []
    assert seen["image_widths"] and all(w > 0 for w in seen["image_widths"]), seen["image_widths"]
    shown = set()
    for path, text in seen["numbers"]:
        value = report
        for part in path:
            value = value[part]
        assert float(text.replace(",", "")) == value, (path, text, value)
        shown.add(tuple(path))
    c = report["counts"]
    assert {("counts", "input"), ("counts", "kept"), ("counts", "dropped")} <= shown
    assert {("counts", "dropped_by_reason", r) for r in c["dropped_by_reason"]} <= shown
    assert {("counts", "dropped_by_stage", s) for s in c["dropped_by_stage"]} <= shown
    assert {("counts", "largest_duplicate_groups", g) for g in list(c["largest_duplicate_groups"])[:8]} <= shown
    pixels = np.asarray(Image.open(io.BytesIO(seen["screenshot"])).convert("L"))
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50  # text, bars and thumbnails, not a blank page


def test_builtin_corpus_report_opens_offline_and_shows_report_json(builtin, browser):
    out, report = builtin
    seen = open_page(browser, os.path.join(out, "report.html"))
    check_page(seen, report)
    for heading in ("Funnel", "Drop reasons", "What each language lost", "CLIP scores", "At the cut",
                    "Largest duplicate groups", "Dropped samples by reason", "Time", "Config"):
        assert heading in seen["text"]
    assert len(seen["image_widths"]) >= 40


def test_tiny_corpus_report_shows_the_group_the_failure_and_both_languages(tiny, browser):
    out, report = tiny
    decisions = pq.read_table(os.path.join(out, "decisions")).to_pylist()
    by_key = {d["key"]: d for d in decisions}
    assert {by_key[k]["reason"] for k in report_corpus.COPIES} == {"exact_duplicate"}
    assert by_key[report_corpus.BROKEN]["reason"] == "unreadable_image"
    assert by_key[report_corpus.SWAPPED]["reason"] == "low_clip_score"
    seen = open_page(browser, os.path.join(out, "report.html"))
    check_page(seen, report)
    with open(os.path.join(out, "report.html")) as f:
        html = f.read()
    (group, size), = report["counts"]["largest_duplicate_groups"].items()
    assert size == 3 and f"{group}: " in seen["text"]
    section = html.split('id="duplicates"')[1].split("</section>")[0]
    kept = by_key[report_corpus.COPIES[0]]["kept_instead"]
    assert 'class="card keeper"' in section and f">{kept}</b>" in section
    assert all(f">{k}</b>" in section for k in {"en-0", *report_corpus.COPIES} - {kept})
    assert section.count("<img ") == 3 and section.count("same image bytes") == 2
    gallery = re.split("<h3|</section>", html.split('id="reason-unreadable_image"')[1])[0]
    assert ">broken</b>" in gallery and "no preview" in gallery and "<img" not in gallery
    languages = html.split('id="languages"')[1].split("</section>")[0]
    assert "<th>en</th>" in languages and "<th>es</th>" in languages
    coverage = html.split('id="coverage"')[1].split("</section>")[0]  # report.json's coverage audit
    for lang, c in report["coverage"]["languages"].items():
        assert f"<th>{lang}</th><td>{c['samples']['input']:,}</td><td>{c['samples']['kept']:,}</td>" in coverage
    assert "en (" in seen["text"] and "es (" in seen["text"]  # a histogram per language
    assert ">swapped</b>" in html.split('id="boundary"')[1].split("</section>")[0]


def test_report_command_rebuilds_the_same_page(builtin, tmp_path, capsys):
    out, _ = builtin
    page = os.path.join(out, "report.html")
    with open(page, "rb") as f:
        before = f.read()
    os.remove(page)
    assert report_cli.main([out]) == 0
    with open(page, "rb") as f:
        assert f.read() == before and capsys.readouterr().out.strip() == page
    assert report_cli.main([str(tmp_path)]) == 2
    assert "holds no report.json" in capsys.readouterr().err


def _decision_batch(rows: list[dict]) -> pa.RecordBatch:
    full = [{**{n: None for n in DECISION_SCHEMA.names}, **r} for r in rows]
    return pa.RecordBatch.from_pylist(full, schema=DECISION_SCHEMA)


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        score = round(float(rng.uniform(-0.2, 0.9)), 4)
        kept = score >= 0.3 and i % 7
        reason = None if kept else ("low_clip_score" if score < 0.3 else "caption_too_short")
        rows.append(dict(key=f"k{i}", source_shard=f"/in/{i % 3:05d}.tar", source_index=i, kept=bool(kept),
                         reason=reason, stage="x", language=("en", "de", None)[i % 3], clip_score=score,
                         clip_threshold=0.3 if reason != "caption_too_short" else None))
    return rows


def _summary(d: html_report.Digest):
    return ({lang: h.tolist() for lang, h in d.histograms.items()}, dict(d.by_language),
            {r: [row["key"] for row in b.rows] for r, b in d.by_reason.items()},
            {lang: [row["key"] for row in b.rows] for lang, b in d.above.items()},
            {lang: [row["key"] for row in b.rows] for lang, b in d.below.items()}, d.kept.rows)


def test_digest_is_bounded_and_independent_of_row_order_and_batching():
    rows = _rows(2000)
    one = html_report.Digest(seed=1)
    one.add(_decision_batch(rows))
    other = html_report.Digest(seed=1)
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    for start in range(0, len(rows), 97):
        other.add(_decision_batch(shuffled[start:start + 97]))
    assert _summary(one) == _summary(other)
    assert all(len(b.items) <= html_report.REASON_SAMPLES for b in one.by_reason.values())
    assert sum(int(h.sum()) for h in one.histograms.values()) == len(rows)
    assert sum(one.by_language.values()) == len(rows)
    # nearest the cut: the passing rows with the smallest scores, the dropped ones with the largest
    en = [r for r in rows if r["language"] == "en" and r["clip_threshold"] is not None]
    below = sorted((r for r in en if not r["kept"] and r["reason"] == "low_clip_score"), key=lambda r: -r["clip_score"])
    assert [round(r["clip_score"], 4) for r in one.below["en"].rows] == [r["clip_score"] for r in below[:5]]
    reseeded = html_report.Digest(seed=2)
    reseeded.add(_decision_batch(rows))
    assert _summary(reseeded)[2] != _summary(one)[2]


def test_histogram_bins_are_exact_for_stored_scores():
    d = html_report.Digest()
    d.add(_decision_batch([dict(key="a", source_shard="s.tar", source_index=0, kept=True, stage="write",
                                clip_score=0.6, clip_threshold=0.6),
                           dict(key="b", source_shard="s.tar", source_index=1, kept=False, reason="low_clip_score",
                                stage="clip_score", clip_score=0.5999, clip_threshold=0.6)]))
    h = d.histograms[html_report.NO_LANGUAGE]
    assert h[html_report.KEPT, 160] == 1 and h[html_report.CUT, 159] == 1  # [0.60, 0.61) and [0.59, 0.60)
    assert html_report._cuts(d.thresholds[html_report.NO_LANGUAGE]) == [pytest.approx(0.6)]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal():
    assert not progress.advance("read", 1)  # off: the stage logs its line
    with progress.on_terminal(io.StringIO()):
        assert not progress.advance("read", 1)
    term = _Terminal()
    with progress.on_terminal(term):
        assert progress.active() and progress.advance("score", 64) and progress.advance("score", 64, status="x")
    assert not progress.active()
    assert "score" in term.getvalue() and "128" in term.getvalue() and "samples/s" in term.getvalue()


def test_coverage_lists_at_most_entries_shown_per_language_lost_ones_first():
    """A MetaCLIP-sized list: the page names the lost entries and the most named, and points to
    report.json for the rest."""
    entries = {f"e{i}": {"input": 1000 - i % 900, "kept": 0 if i == 950 else 1} for i in range(1000)}
    coverage = {"balanced": False, "metadata": "m", "unlisted": {}, "languages": {"en": {
        "head_to_tail": {"input": 2.0, "kept": 2.0}, "lost": ["e950"], "samples": {"input": 5, "kept": 4},
        "entries_present": {"input": 1000, "kept": 999}, "entries": entries}}}
    page = html_report._coverage(coverage)
    shown = page.split("entries named</summary>")[1]
    assert shown.startswith('<p class="sub">e950 ')  # the lost entry first
    assert shown.count("→") == html_report.ENTRIES_SHOWN and "(+800 more in report.json)" in shown
    assert "e0 1,000 → 1" in shown and "e899 " not in shown  # most named kept; the least named left out
