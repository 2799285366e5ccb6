"""Metadata matching (filters/metadata.py): every script, word boundaries, normalisation, the shipped lists."""
import itertools
import pickle

import pytest
from curate.filters import metadata
from curate.filters.metadata import Metadata, load_metadata, normalise

from curate import synth

REQUIRED = {"en", "de", "fr", "es", "ru", "ar", "hi", "zh", "ja", "ko", "th"}


@pytest.fixture(scope="module")
def shipped():
    return load_metadata()


@pytest.mark.parametrize("language, caption, expected", [
    ("en", "Two small red circles on the left", {"two", "small", "red", "circles", "left", "on the left"}),
    ("ru", "Красный круг слева", {"красный", "круг", "слева"}),  # Cyrillic
    ("ar", "دائرة حمراء صغيرة على اليسار", {"دائرة", "حمراء", "صغيرة", "على اليسار", "يسار"}),  # Arabic
    ("hi", "बाईं ओर एक छोटा लाल वृत्त", {"बाईं ओर", "एक", "छोटा", "लाल", "वृत्त"}),  # Devanagari
    ("zh", "左边有一个红色圆形", {"左", "左边", "一", "一个", "红", "红色", "圆", "圆形"}),  # Han, no spaces
    ("ja", "左にオレンジのボールがたくさん", {"左", "オレンジ", "ボール", "たくさん"}),  # kana
    ("ko", "왼쪽에 작은 빨간 원이 두 개", {"왼쪽", "작은", "빨간", "원", "두"}),  # Hangul, particles attached
    ("th", "วงกลมสีแดงทางซ้าย", {"วงกลม", "สีแดง", "แดง", "ทางซ้าย", "ซ้าย"}),  # Thai, no spaces
])
def test_every_script(shipped, language, caption, expected):
    assert set(shipped.match(caption, language)) == expected


@pytest.mark.parametrize("language, caption", [
    ("en", "reduce the category of startups"),  # red, cat, star inside longer words
    ("en", "scatter redness"),
    ("de", "Rotwein und Blaubeeren"),  # German compounds are not split
    ("ru", "крестьянин"),  # крест inside "peasant"
    ("ru", "13 и 22"),  # digits inside numbers
    ("hi", "लालच"),  # लाल inside "greed"
    ("ar", "تحتاج"),  # تحت ("under") at the start of "needs": what follows is no boundary
    ("ar", "السماء"),  # ماء ("water") after ال + س: no proclitic
    ("ko", "원숭이 세계"),  # 원 in "monkey", 세 in "world": the rest is no particle
])
def test_no_match_inside_a_longer_word_where_the_script_has_spaces(shipped, language, caption):
    assert shipped.match(caption, language) == ()


def test_unspaced_scripts_match_plain_substrings(shipped):
    # MetaCLIP 2's rule, with its known cost: a count word inside a shape word also matches
    assert "三" in shipped.match("三角形", "zh") and "สาม" in shipped.match("สามเหลี่ยม", "th")
    # a Latin entry in a Japanese list still needs word boundaries
    md = Metadata({"ja": ["LED", "赤"]})
    assert md.match("LEDライト", "ja") == ("LED",) and md.match("LEDS 赤い", "ja") == ("赤",)


def test_multi_word_entries_and_whitespace(shipped):
    assert "on the left" in shipped.match("a cup  on the\tleft", "en")
    assert "in der Mitte" in shipped.match("ein Ball in der Mitte", "de")
    assert "a la izquierda" in shipped.match("una taza a la izquierda", "es")
    assert "on the left" not in shipped.match("on the leftmost shelf", "en")


def test_nfkc_and_casefold(shipped):
    assert shipped.match("ＲＥＤ ＣＩＲＣＬＥ", "en") == ("circle", "red")  # full-width Latin
    assert "オレンジ" in shipped.match("ｵﾚﾝｼﾞ", "ja")  # half-width katakana
    # Devanagari ड़ precomposed (U+095C) or as ड + nukta: NFKC makes both the same letters
    assert shipped.match("\u092c\u095c\u093e", "hi") == shipped.match("\u092c\u0921\u093c\u093e", "hi") != ()
    # casefold maps ß to "ss": the capitalised, the Swiss and the German spelling are one entry
    for caption in ("GROSS", "groß", "Gross", "GROẞ"):
        assert shipped.match(caption, "de") == ("groß",), caption
    assert normalise("Groß  Kreis") == "gross kreis"


def test_korean_particles_and_arabic_proclitics(shipped):
    assert "별" in shipped.match("별들을", "ko") and "십자가" in shipped.match("십자가가", "ko")
    assert "원" not in shipped.match("원래", "ko")
    for word in ("الدائرة", "ودائرة", "بالدائرة"):
        assert "دائرة" in shipped.match(word, "ar"), word
    assert "أحمر" in shipped.match("للأحمر", "ar")


def test_language_codes():
    md = Metadata({"pt": ["mesa"], "pt-br": ["xícara"], "zh": ["红色"]})
    assert md.match("mesa xícara", "pt-BR") == ("xícara",)  # the full tag's file first
    assert md.match("mesa xícara", "pt_PT") == ("mesa",)  # else the primary subtag's
    assert md.match("红色", "zh-Hans") == ("红色",) and md.match("红色", "ZH") == ("红色",)
    assert md.match("mesa", "xx") == () and md.match("mesa", None) == () and md.match("", "pt") == ()
    assert md.entries("pt-AO") == ("mesa",) and md.entries("xx") == ()
    assert Metadata({"es": ["mesa"], "es-mx": []}).match("mesa", "es-MX") == ()  # its own (empty) list
    assert md.list_language("pt-BR") == "pt-br" and md.list_language("pt-AO") == "pt" and md.list_language("x") is None


def test_entries_as_spelled_unique_and_sorted():
    md = Metadata({"de": ["groß", "GROSS", "gross", "Kreis", "  ", "Kreis"]})
    assert md.entries("de") == ("groß", "Kreis")
    assert md.match("Kreis GROSS kreis", "de") == ("Kreis", "groß")  # str order, each once


def test_pickles_as_entries(shipped):
    again = pickle.loads(pickle.dumps(shipped))
    assert again.languages == shipped.languages and again.match("ＲＥＤ", "en") == ("red",)


def test_load_metadata_folder(tmp_path):
    (tmp_path / "en.txt").write_text("# source: a test\nred\n\n  blue  \n# not an entry\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    md = load_metadata(str(tmp_path))
    assert md.languages == ("en",) and md.entries("en") == ("red", "blue") and md.source == str(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        load_metadata(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no metadata files"):
        load_metadata(str(empty))
    # a byte-order mark (Notepad's UTF-8) is no part of the first entry; a latin-1 file names itself
    bom = tmp_path / "bom"
    bom.mkdir()
    (bom / "it.txt").write_bytes("\ufeffrosso\nblu\n".encode("utf-8"))
    assert load_metadata(str(bom)).match("un cerchio rosso", "it") == ("rosso",)
    (bom / "fr.txt").write_bytes("bleu clair\nvert foncé\n".encode("latin-1"))
    with pytest.raises(ValueError, match="fr.txt: not UTF-8"):
        load_metadata(str(bom))


def test_shipped_lists(shipped):
    assert REQUIRED <= set(shipped.languages) and len(shipped.languages) >= 12
    for language in shipped.languages:
        assert 80 <= len(shipped.entries(language)) <= 150, language
        with open(f"{metadata.DEFAULT_METADATA}/{language}.txt", encoding="utf-8") as f:
            assert "Source:" in f.read(), language  # every file names where its entries come from


def _groups():
    for shape, colour, size, count, position in itertools.product(
            synth.SHAPES, synth.COLOURS, synth.SIZES, (1, 2, 3), synth.POSITIONS):
        yield synth.Group(shape, colour, size, count, position)


def concept_words(g, language):
    """The words a caption of ``g`` uses for its shape, colour, size, position and count."""
    v = synth.VOCAB[language]
    forms, count = v["shape"][g.shape], v["count"][g.count]
    if isinstance(count, tuple):  # (masculine, feminine)
        count = count[g.shape in v["feminine"]]
    elif g.count == 1 and g.shape in v.get("feminine", ()):
        count += "e" if language == "fr" else "a"  # une étoile, una estrella
    words = {forms[min(g.count, len(forms)) - 1], v["colour"][g.colour], v["size"][g.size], v["position"][g.position]}
    return words if (language, g.count) == ("en", 1) else words | {count}  # English "a": an article, no entry


@pytest.mark.parametrize("language", synth.ALL_LANGUAGES)
def test_every_synth_caption_matches_its_concept_words(shipped, language):
    """Balancing runs on the built-in corpus: each rendered caption matches the words of its scene."""
    for g in _groups():
        matched = {normalise(e) for e in shipped.match(synth.caption([g], language), language)}
        assert {normalise(w) for w in concept_words(g, language)} <= matched, (language, g)
