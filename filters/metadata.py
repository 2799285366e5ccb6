"""Metadata matching: which concept entries of its language a caption names.

MetaCLIP (Xu et al., 2023, "Demystifying CLIP Data", section 3) balances a corpus over a list of
metadata entries: each caption is matched against every entry by substring, and the matched entries
are what balancing counts and samples (filters/balance.py). MetaCLIP 2 (Chuang et al., 2025, "MetaCLIP
2: A Worldwide Scaling Recipe", section 3; its code, metaclip/curation/substr_matching.py) keeps one
list per language and matches a caption against its own language's list only, with an Aho-Corasick
automaton (pyahocorasick) over all entries at once.

The rule here, for a caption in language L:

- Both sides are normalised alike (``normalise``): NFKC (full-width "ＲＥＤ" reads as "RED", half-width
  katakana as full width, Devanagari nukta letters split), casefold (German "groß", "GROSS" and "gross"
  are one word: casefold maps ß to "ss"), NFKC again, and runs of whitespace made one space (so
  "on  the left" matches the entry "on the left").
- Word boundaries where the script has spaces. As in MetaCLIP 2's ``get_spaced_metadata``, the rule
  is decided per end of the ENTRY, by the script of its first and last letter: an end whose letter
  belongs to a script written without spaces (``UNSPACED_SCRIPTS``: Han, Hiragana, Katakana, Thai,
  Lao, Khmer, Myanmar, Tibetan) matches anywhere (a plain substring: 三 also matches inside 三角形);
  any other end must sit at a word boundary, where the neighbouring character is not a letter, mark
  or digit (no "red" in "reduce", no "cat" in "category", no "3" in "13"), or is a letter of a script
  without spaces (one step beyond MetaCLIP 2, whose padding with spaces misses "LED" in "LEDライト").
  So a Latin entry in a Japanese list still needs boundaries, and the rule needs no list of codes.
- Attached function words, per language code: Korean is written with spaces but attaches particles
  to nouns (원이, 왼쪽에, 별들을): a Korean entry must START at a word boundary and may END at one or
  before one of ``KOREAN_PARTICLES`` that closes the word (so 원 matches 원이, not 원숭이). Arabic
  attaches the conjunctions و ف, the prepositions ب ك ل and the article ال before a word: an Arabic
  entry may START after one of ``ARABIC_PROCLITICS`` (الدائرة and ودائرة match دائرة) and must END at a
  boundary. Both trade a little precision for recall (بحار, "seas", reads as ب + حار, "hot").
- A caption's language is normalised to a file name (``language_file``): lower case, "_" read as
  "-", the full tag first ("pt-br.txt"), then its primary subtag ("pt-BR", "pt_PT" -> "pt.txt";
  "zh-Hans" -> "zh.txt"). A language with no file, or no language at all, matches nothing (the
  balancing step decides what happens to unmatched samples: ``balance.unmatched``).

Entries are returned as the file spells them (the first spelling of each normalised form), sorted
and unique: overlapping entries all match ("on the left" and "left").
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping, Sequence

import ahocorasick
import regex

from curate import fs

# Scripts written without spaces between words: MetaCLIP 2's substr_matching.is_cjk_or_similar
# (CJK ideographs, Thai, Lao, Burmese, Khmer, Tibetan), with the Japanese kana, which it leaves out.
UNSPACED_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan")
_UNSPACED = regex.compile("[" + "".join(rf"\p{{scx={s}}}" for s in UNSPACED_SCRIPTS) + "]")

# Korean particles (josa) and the copula that close a noun, with the plural 들 before them: the common
# case and auxiliary particles of Korean grammars, listed by hand. 와/과, 이/가, 을/를, 은/는, 으로/로
# are one particle each, spelled after a consonant or a vowel.
_KOREAN_BASE = ("이", "가", "은", "는", "을", "를", "의", "에", "에서", "에게", "에는", "에서는", "와", "과",
                "도", "만", "로", "으로", "로는", "으로는", "랑", "이랑", "하고", "처럼", "보다", "까지",
                "부터", "이나", "나", "이다", "입니다", "이고", "이며", "예요", "이에요")
KOREAN_PARTICLES = frozenset(_KOREAN_BASE) | frozenset("들" + p for p in ("", *_KOREAN_BASE))

# Arabic proclitics: conjunction (و, ف), then preposition (ب, ك, ل), then the article ال, each optional;
# ل + ال is written لل.
ARABIC_PROCLITICS = frozenset(
    conjunction + preposition + article
    for conjunction in ("", "و", "ف") for preposition in ("", "ب", "ك", "ل") for article in ("", "ال")
    if not (preposition == "ل" and article)) | frozenset(c + "لل" for c in ("", "و", "ف"))
ARABIC_PROCLITICS -= {""}

# Per language code: what may stand between an entry and the word boundary before it / after it.
PREFIXES: dict[str, frozenset[str]] = {"ar": ARABIC_PROCLITICS}
SUFFIXES: dict[str, frozenset[str]] = {"ko": KOREAN_PARTICLES}

# Zero-width (non-)joiners sit inside words in Indic and Persian text.
_JOINERS = {"\u200c", "\u200d"}

# filters/ and configs/ are siblings both in a checkout and installed (curate/filters, curate/configs).
DEFAULT_METADATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "metadata")
"""The metadata shipped with curate (configs/metadata)."""


def normalise(text: str) -> str:
    """NFKC, casefold, NFKC again (casefolding can leave a string that is not NFKC), whitespace runs
    made one space, ends stripped: the form in which captions and entries are compared."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def language_tag(language: str) -> str:
    """A language tag as metadata file stems spell it: lower case, '-' between subtags (``pt_BR`` ->
    ``pt-br``)."""
    return language.strip().lower().replace("_", "-")


def language_file(language: str | None, languages: Sequence[str] | frozenset[str]) -> str | None:
    """The metadata language that serves ``language``: its full tag, else its primary subtag, among
    ``languages`` (file stems, lower case); None when neither has a file."""
    if not language:
        return None
    tag = language_tag(language)
    for candidate in (tag, tag.split("-")[0]):
        if candidate in languages:
            return candidate
    return None


def read_entries(text: str) -> list[str]:
    """The entries of a metadata file's text: one per line, surrounding whitespace stripped; blank
    lines and lines starting with '#' skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _is_word_char(ch: str) -> bool:
    """A letter, mark or digit of a script written with spaces: what continues a word there."""
    return (unicodedata.category(ch)[0] in "LMN" or ch in _JOINERS) and not _UNSPACED.match(ch)


class Metadata:
    """Metadata entries per language, each language with its Aho-Corasick automaton.

    Pickles as its entries (the automata are rebuilt on unpickling), so a Beam DoFn can hold one.
    """

    def __init__(self, entries: Mapping[str, Sequence[str]], source: str = ""):
        self.source = source
        self._entries: dict[str, tuple[str, ...]] = {}
        self._automata: dict[str, ahocorasick.Automaton] = {}
        for language, listed in sorted(entries.items()):
            code = language_tag(language)
            automaton, kept = ahocorasick.Automaton(), []
            for entry in listed:
                key = normalise(entry)
                if not key or key in automaton:  # the first spelling of a normalised form wins
                    continue
                kept.append(entry)
                automaton.add_word(key, (entry, len(key), not _UNSPACED.match(key[0]),
                                         not _UNSPACED.match(key[-1])))
            if kept:
                automaton.make_automaton()
                self._automata[code] = automaton
            self._entries[code] = tuple(kept)

    def __reduce__(self):
        return Metadata, (self._entries, self.source)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with a list, sorted."""
        return tuple(sorted(self._entries))

    def list_language(self, language: str | None) -> str | None:
        """The language of the list that serves ``language`` ("pt-BR" -> "pt"), the key under which a
        balancing step counts its matches; None when no list does."""
        return language_file(language, self._entries.keys())

    def entries(self, language: str | None) -> tuple[str, ...]:
        """The entries that serve ``language`` (``language_file``), as listed; () when none do."""
        code = self.list_language(language)
        return self._entries[code] if code else ()

    def match(self, caption: str | None, language: str | None) -> tuple[str, ...]:
        """The entries of ``language``'s list that ``caption`` names, sorted and unique (rule: module
        docstring). () for an empty caption or a language without a list."""
        automaton = self._automata.get(self.list_language(language) or "")
        if automaton is None or not caption:
            return ()
        code, text = self.list_language(language), normalise(caption)
        prefixes, suffixes = PREFIXES.get(code, frozenset()), SUFFIXES.get(code, frozenset())
        found = set()
        for end, (entry, length, bounded_start, bounded_end) in automaton.iter(text):
            start, stop = end - length + 1, end + 1
            if bounded_start and not _open_before(text, start, prefixes):
                continue
            if bounded_end and not _open_after(text, stop, suffixes):
                continue
            found.add(entry)
        return tuple(sorted(found))


def _open_before(text: str, start: int, prefixes: frozenset[str]) -> bool:
    """A word boundary at ``start``, or one of ``prefixes`` exactly between the word's start and it."""
    if start == 0 or not _is_word_char(text[start - 1]):
        return True
    if not prefixes:
        return False
    word_start = start
    while word_start > 0 and _is_word_char(text[word_start - 1]):
        word_start -= 1
    return text[word_start:start] in prefixes


def _open_after(text: str, stop: int, suffixes: frozenset[str]) -> bool:
    """A word boundary at ``stop``, or one of ``suffixes`` exactly between it and the word's end."""
    if stop == len(text) or not _is_word_char(text[stop]):
        return True
    if not suffixes:
        return False
    word_end = stop
    while word_end < len(text) and _is_word_char(text[word_end]):
        word_end += 1
    return text[stop:word_end] in suffixes


def load_metadata(folder: str = DEFAULT_METADATA) -> Metadata:
    """Every ``LANGUAGE.txt`` in ``folder`` (a local path or any fsspec URL), one list per language
    named by the file's stem. Raises ValueError when the folder holds no such file."""
    if not fs.isdir(folder):
        raise ValueError(f"{folder} is not a folder")
    paths = fs.glob(fs.join(folder, "*.txt"))
    if not paths:
        raise ValueError(f"no metadata files (LANGUAGE.txt) in {folder}")
    entries = {}
    for path in paths:
        with fs.open(path, "rb") as f:
            try:  # utf-8-sig: a byte-order mark is no part of the first entry
                text = f.read().decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        entries[fs.basename(path)[: -len(".txt")]] = read_entries(text)
    return Metadata(entries, source=folder)
