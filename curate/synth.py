"""The built-in sample corpus: rendered scenes with multilingual captions and labelled noise.

    python -m curate.synth --out DIR --samples N --seed S [--noise 0.3] [--mix skewed] [--stamped 0.2]

Writes raw shards in img2dataset's layout (``NNNNN.tar`` with ``KEY.jpg``/``KEY.txt``/``KEY.json``,
``NNNNN.parquet``, ``NNNNN_stats.json``) and, beside them, ``ground_truth.parquet``: key -> clean or
noise kind (and the original's key for duplicates). The ground truth never enters a shard, so no
filter can read it. Every sample is a pure function of (seed, index, mix), so the corpus is
deterministic and shards can be rendered in parallel.

Two mixes (``MIXES``): "default" draws captions in five languages and every shape and colour
equally often (its bytes never change); "skewed" draws captions in all twelve languages of the
shipped metadata (``ALL_LANGUAGES``) and shapes and colours with the long tail of web alt-text: one
language and a few concepts dominate (``SKEWED``), which is what metadata balancing
(filters/balance.py) is for. The ground truth's ``scene`` names every concept of a sample.

``stamped`` (opt-in, default 0): that share of the samples that would be clean get a text watermark
tiled diagonally over the scene, as stock-photo previews carry (``stamp``), ground-truth kind
``stamped``; the caption does not mention it. Something a learned filter on image embeddings can be
taught to remove (curate/probe.py). With 0 no draw is made, so the corpus is the same, byte for
byte, as before the option existed.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from curate.io import atomic_path, sample_key, write_tar

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
COLOURS = {
    "red": (215, 35, 35), "green": (35, 165, 50), "blue": (35, 70, 215), "yellow": (240, 215, 30),
    "purple": (135, 45, 170), "orange": (245, 135, 20), "white": (248, 248, 248), "black": (18, 18, 18),
}
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
# Two groups of objects sit in opposite halves so the caption's positions stay true.
POSITION_PAIRS = [("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")]
CANVASES = [(256, 256), (320, 240), (240, 320), (288, 224), (224, 288)]
BACKGROUNDS = [(128, 128, 128), (150, 140, 120), (110, 125, 140), (140, 150, 130), (160, 150, 155)]

LANGUAGES = ["en", "de", "fr", "es", "ru"]
LANGUAGE_WEIGHTS = [0.4, 0.15, 0.15, 0.15, 0.15]

# The "skewed" mix: Zipf-like shares (about 1/rank), so that English and the first two shapes and
# colours hold about half the samples and the last ones a few percent; sizes, counts and positions
# stay uniform (they are not what web text skews on). Weights sum to 1.
SKEWED = {
    "language": {"en": 0.46, "de": 0.12, "fr": 0.09, "es": 0.07, "ru": 0.06, "pt": 0.05, "zh": 0.045,
                 "ja": 0.035, "ar": 0.025, "ko": 0.02, "hi": 0.015, "th": 0.01},
    "shape": {"circle": 0.45, "square": 0.25, "triangle": 0.12, "star": 0.08, "hexagon": 0.06, "cross": 0.04},
    "colour": {"red": 0.35, "blue": 0.2, "black": 0.12, "white": 0.1, "green": 0.08, "yellow": 0.06,
               "orange": 0.05, "purple": 0.04},
}
MIXES = ("default", "skewed")

# Vocabulary per language. Nouns are (one, several); adjectives follow the noun in parentheses in
# de/fr/es/ru, which keeps every template grammatical without agreement rules.
VOCAB = {
    "en": {
        "shape": {"circle": ("circle", "circles"), "square": ("square", "squares"),
                  "triangle": ("triangle", "triangles"), "star": ("star", "stars"),
                  "hexagon": ("hexagon", "hexagons"), "cross": ("cross", "crosses")},
        "colour": {c: c for c in COLOURS},
        "size": {"small": "small", "large": "large"},
        "count": {1: "a", 2: "two", 3: "three"},
        "position": {"left": "on the left", "right": "on the right", "top": "at the top",
                     "bottom": "at the bottom", "center": "in the center"},
        "and": "and",
    },
    "de": {
        "shape": {"circle": ("Kreis", "Kreise"), "square": ("Quadrat", "Quadrate"),
                  "triangle": ("Dreieck", "Dreiecke"), "star": ("Stern", "Sterne"),
                  "hexagon": ("Sechseck", "Sechsecke"), "cross": ("Kreuz", "Kreuze")},
        "colour": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
                   "purple": "lila", "orange": "orange", "white": "weiß", "black": "schwarz"},
        "size": {"small": "klein", "large": "groß"},
        "count": {1: "ein", 2: "zwei", 3: "drei"},
        "position": {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten",
                     "center": "in der Mitte"},
        "and": "und",
    },
    "fr": {
        "shape": {"circle": ("cercle", "cercles"), "square": ("carré", "carrés"),
                  "triangle": ("triangle", "triangles"), "star": ("étoile", "étoiles"),
                  "hexagon": ("hexagone", "hexagones"), "cross": ("croix", "croix")},
        "colour": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune",
                   "purple": "violet", "orange": "orange", "white": "blanc", "black": "noir"},
        "size": {"small": "petit", "large": "grand"},
        "count": {1: "un", 2: "deux", 3: "trois"},
        "feminine": {"star", "cross"},
        "position": {"left": "à gauche", "right": "à droite", "top": "en haut",
                     "bottom": "en bas", "center": "au centre"},
        "and": "et",
    },
    "es": {
        "shape": {"circle": ("círculo", "círculos"), "square": ("cuadrado", "cuadrados"),
                  "triangle": ("triángulo", "triángulos"), "star": ("estrella", "estrellas"),
                  "hexagon": ("hexágono", "hexágonos"), "cross": ("cruz", "cruces")},
        "colour": {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo",
                   "purple": "morado", "orange": "naranja", "white": "blanco", "black": "negro"},
        "size": {"small": "pequeño", "large": "grande"},
        "count": {1: "un", 2: "dos", 3: "tres"},
        "feminine": {"star", "cross"},
        "position": {"left": "a la izquierda", "right": "a la derecha", "top": "arriba",
                     "bottom": "abajo", "center": "en el centro"},
        "and": "y",
    },
    "ru": {
        # (one, two-or-three): Russian nouns after 2 and 3 take the genitive singular.
        "shape": {"circle": ("круг", "круга"), "square": ("квадрат", "квадрата"),
                  "triangle": ("треугольник", "треугольника"), "star": ("звезда", "звезды"),
                  "hexagon": ("шестиугольник", "шестиугольника"), "cross": ("крест", "креста")},
        "colour": {"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый",
                   "purple": "фиолетовый", "orange": "оранжевый", "white": "белый",
                   "black": "чёрный"},
        "size": {"small": "маленький", "large": "большой"},
        "count": {1: "1", 2: "2", 3: "3"},
        "position": {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу",
                     "center": "в центре"},
        "and": "и",
    },
    # The languages below are not in LANGUAGES (the default corpus stays as it is); each renders a
    # group through its "template" (``_phrase``): nouns are (one, two, three-or-more) forms, as many
    # as the language tells apart; a count given as (masculine, feminine) agrees with the noun; groups
    # are joined by "join". Every concept word is an entry of configs/metadata/<language>.txt.
    "pt": {
        "shape": {"circle": ("círculo", "círculos"), "square": ("quadrado", "quadrados"),
                  "triangle": ("triângulo", "triângulos"), "star": ("estrela", "estrelas"),
                  "hexagon": ("hexágono", "hexágonos"), "cross": ("cruz", "cruzes")},
        "colour": {"red": "vermelho", "green": "verde", "blue": "azul", "yellow": "amarelo",
                   "purple": "roxo", "orange": "laranja", "white": "branco", "black": "preto"},
        "size": {"small": "pequeno", "large": "grande"},
        "count": {1: ("um", "uma"), 2: ("dois", "duas"), 3: ("três", "três")},
        "feminine": {"star", "cross"},
        "position": {"left": "à esquerda", "right": "à direita", "top": "em cima", "bottom": "embaixo",
                     "center": "no centro"},
        "template": "{count} {noun} ({colour}, {size}) {position}",
        "join": " e ",
    },
    "ar": {
        # (one, two: the dual, three: the plural); "one" and "two" follow the noun, "three" precedes it.
        "shape": {"circle": ("دائرة", "دائرتان", "دوائر"), "square": ("مربع", "مربعان", "مربعات"),
                  "triangle": ("مثلث", "مثلثان", "مثلثات"), "star": ("نجمة", "نجمتان", "نجوم"),
                  "hexagon": ("مسدس", "مسدسان", "مسدسات"), "cross": ("صليب", "صليبان", "صلبان")},
        "colour": {"red": "أحمر", "green": "أخضر", "blue": "أزرق", "yellow": "أصفر",
                   "purple": "بنفسجي", "orange": "برتقالي", "white": "أبيض", "black": "أسود"},
        "size": {"small": "صغير", "large": "كبير"},
        # Numerals 3-10 take the opposite gender of their noun: ثلاثة مربعات, ثلاث دوائر.
        "count": {1: ("واحد", "واحدة"), 2: ("اثنان", "اثنتان"), 3: ("ثلاثة", "ثلاث")},
        "feminine": {"circle", "star"},
        "position": {"left": "على اليسار", "right": "على اليمين", "top": "في الأعلى",
                     "bottom": "في الأسفل", "center": "في الوسط"},
        "template": {1: "{noun} {count} ({colour}، {size}) {position}",
                     2: "{noun} {count} ({colour}، {size}) {position}",
                     3: "{count} {noun} ({colour}، {size}) {position}"},
        "join": " و",  # و is written attached to the next word
    },
    "hi": {
        "shape": {"circle": ("वृत्त", "वृत्त"), "square": ("वर्ग", "वर्ग"), "triangle": ("त्रिभुज", "त्रिभुज"),
                  "star": ("तारा", "तारे"), "hexagon": ("षट्भुज", "षट्भुज"), "cross": ("क्रॉस", "क्रॉस")},
        "colour": {"red": "लाल", "green": "हरा", "blue": "नीला", "yellow": "पीला",
                   "purple": "बैंगनी", "orange": "नारंगी", "white": "सफ़ेद", "black": "काला"},
        "size": {"small": "छोटा", "large": "बड़ा"},
        "count": {1: "एक", 2: "दो", 3: "तीन"},
        "position": {"left": "बाईं ओर", "right": "दाईं ओर", "top": "ऊपर", "bottom": "नीचे",
                     "center": "बीच में"},
        "template": "{count} {noun} ({colour}, {size}) {position}",
        "join": " और ",
    },
    "zh": {
        "shape": {"circle": ("圆形",), "square": ("正方形",), "triangle": ("三角形",), "star": ("星形",),
                  "hexagon": ("六边形",), "cross": ("十字形",)},
        "colour": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
                   "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色"},
        "size": {"small": "小", "large": "大"},
        "count": {1: "一个", 2: "两个", 3: "三个"},
        "position": {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "center": "中间"},
        "template": "{position}有{count}{size}的{colour}{noun}",
        "join": "，",
    },
    "ja": {
        "shape": {"circle": ("円",), "square": ("正方形",), "triangle": ("三角形",), "star": ("星",),
                  "hexagon": ("六角形",), "cross": ("十字",)},
        "colour": {"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
                   "purple": "紫の", "orange": "オレンジ色の", "white": "白い", "black": "黒い"},
        "size": {"small": "小さい", "large": "大きい"},
        "count": {1: "一つ", 2: "二つ", 3: "三つ"},
        "position": {"left": "左", "right": "右", "top": "上", "bottom": "下", "center": "中央"},
        "template": "{position}に{size}{colour}{noun}が{count}",
        "join": "、",
    },
    "ko": {
        "shape": {"circle": ("원",), "square": ("정사각형",), "triangle": ("삼각형",), "star": ("별",),
                  "hexagon": ("육각형",), "cross": ("십자가",)},
        "colour": {"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란",
                   "purple": "보라색", "orange": "주황색", "white": "흰", "black": "검은"},
        "size": {"small": "작은", "large": "큰"},
        "count": {1: "한", 2: "두", 3: "세"},
        "position": {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "center": "가운데"},
        # {subject}: the noun with its subject particle (원이, 십자가가), as Korean writes it.
        "template": "{position}에 {size} {colour} {subject} {count} 개",
        "join": ", ",
    },
    "th": {
        "shape": {"circle": ("วงกลม",), "square": ("สี่เหลี่ยมจัตุรัส",), "triangle": ("สามเหลี่ยม",),
                  "star": ("ดาว",), "hexagon": ("หกเหลี่ยม",), "cross": ("กากบาท",)},
        "colour": {"red": "สีแดง", "green": "สีเขียว", "blue": "สีน้ำเงิน", "yellow": "สีเหลือง",
                   "purple": "สีม่วง", "orange": "สีส้ม", "white": "สีขาว", "black": "สีดำ"},
        "size": {"small": "เล็ก", "large": "ใหญ่"},
        "count": {1: "หนึ่ง", 2: "สอง", 3: "สาม"},
        "position": {"left": "ทางซ้าย", "right": "ทางขวา", "top": "ด้านบน", "bottom": "ด้านล่าง",
                     "center": "ตรงกลาง"},
        "template": "{noun}{colour}{size}{count}อัน {position}",  # อัน: the general classifier
        "join": " และ ",
    },
}
# Every language a caption can be rendered in; the default corpus draws from LANGUAGES only.
ALL_LANGUAGES = [*LANGUAGES, "pt", "ar", "hi", "zh", "ja", "ko", "th"]

BOILERPLATE = ["IMG_{n:04d}.jpg", "DSC{n:05d}.JPG", "click here", "click here to enlarge",
               "image", "untitled", "photo", "stock photo", "no description available",
               "thumbnail", "view larger image", "{n}.png"]

# Noise kinds and their share of the noisy fraction.
NOISE_KINDS = {
    "mismatched_caption": 0.25, "exact_duplicate": 0.10, "near_duplicate": 0.15,
    "small_image": 0.10, "extreme_aspect": 0.08, "empty_caption": 0.07,
    "boilerplate_caption": 0.09, "corrupt_image": 0.08, "truncated_image": 0.08,
}
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")
# Opt-in (generate's ``stamped``): a would-be clean sample with a watermark over the scene.
STAMPED = "stamped"
WATERMARKS = ("SAMPLE", "PREVIEW", "© STOCK", "WATERMARK", "PROOF")


@dataclass(frozen=True)
class Group:
    shape: str
    colour: str
    size: str
    count: int
    position: str


@dataclass(frozen=True)
class Plan:
    """What sample ``index`` will be: its kind and, for borrowed content, the source index."""
    index: int
    kind: str
    source: int = -1


def sample_rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, salt])


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    return names[rng.choice(len(names), p=list(weights.values()))]


def _language(rng: np.random.Generator, mix: str) -> str:
    if mix == "skewed":
        return _pick(rng, SKEWED["language"])
    return LANGUAGES[rng.choice(len(LANGUAGES), p=LANGUAGE_WEIGHTS)]


def make_scene(rng: np.random.Generator, mix: str = "default") -> list[Group]:
    def group(position):
        if mix == "skewed":
            shape, colour = _pick(rng, SKEWED["shape"]), _pick(rng, SKEWED["colour"])
        else:
            shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        return Group(shape, colour, SIZES[rng.integers(2)], int(rng.integers(1, 4)), position)

    if rng.random() < 0.3:  # mostly two groups: fewer scenes share a caption by chance
        return [group(POSITIONS[rng.integers(len(POSITIONS))])]
    a, b = POSITION_PAIRS[rng.integers(len(POSITION_PAIRS))]
    first, second = group(a), group(b)
    while (second.shape, second.colour) == (first.shape, first.colour):
        second = group(b)
    return [first, second]


def _korean_subject(noun: str) -> str:
    """The noun with its subject particle: 이 after a final consonant (batchim), else 가."""
    final = (ord(noun[-1]) - 0xAC00) % 28 if "\uac00" <= noun[-1] <= "\ud7a3" else 0
    return noun + ("이" if final else "가")


def _phrase(g: Group, lang: str) -> str:
    """One group in a language with a "template" (see VOCAB)."""
    v = VOCAB[lang]
    forms = v["shape"][g.shape]
    noun = forms[min(g.count, len(forms)) - 1]
    count = v["count"][g.count]
    if isinstance(count, tuple):  # (masculine, feminine)
        count = count[g.shape in v.get("feminine", ())]
    template = v["template"] if isinstance(v["template"], str) else v["template"][g.count]
    fields = {"count": count, "noun": noun, "colour": v["colour"][g.colour], "size": v["size"][g.size],
              "position": v["position"][g.position]}
    if "{subject}" in template:
        fields["subject"] = _korean_subject(noun)
    return template.format(**fields)


def caption(groups: list[Group], lang: str) -> str:
    v = VOCAB[lang]
    if "template" in v:
        return v["join"].join(_phrase(g, lang) for g in groups)
    parts = []
    for g in groups:
        noun = v["shape"][g.shape][0 if g.count == 1 else 1]
        if lang == "en":
            parts.append(f"{v['count'][g.count]} {v['size'][g.size]} {v['colour'][g.colour]} {noun} "
                         f"{v['position'][g.position]}")
        else:
            count = v["count"][g.count]
            if g.count == 1 and g.shape in v.get("feminine", ()):
                count += "e" if lang == "fr" else "a"  # une étoile, una estrella
            parts.append(f"{count} {noun} ({v['colour'][g.colour]}, {v['size'][g.size]}) "
                         f"{v['position'][g.position]}")
    return f" {v['and']} ".join(parts)


def _region(position: str, w: int, h: int) -> tuple[float, float, float, float]:
    x0, x1, y0, y1 = {"left": (0.04, 0.46, 0.08, 0.92), "right": (0.54, 0.96, 0.08, 0.92),
                      "top": (0.08, 0.92, 0.04, 0.46), "bottom": (0.08, 0.92, 0.54, 0.96),
                      "center": (0.28, 0.72, 0.28, 0.72)}[position]
    return x0 * w, x1 * w, y0 * h, y1 * h


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, rot: float):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    if shape == "square":
        k, angles = r * math.sqrt(2) * 0.85, [rot + math.pi / 4 + i * math.pi / 2 for i in range(4)]
        pts = [(cx + k * math.cos(a), cy + k * math.sin(a)) for a in angles]
    elif shape == "triangle":
        pts = [(cx + r * math.cos(rot - math.pi / 2 + i * 2 * math.pi / 3),
                cy + r * math.sin(rot - math.pi / 2 + i * 2 * math.pi / 3)) for i in range(3)]
    elif shape == "hexagon":
        pts = [(cx + r * math.cos(rot + i * math.pi / 3), cy + r * math.sin(rot + i * math.pi / 3))
               for i in range(6)]
    elif shape == "star":
        pts = [(cx + (r if i % 2 == 0 else r * 0.45) * math.cos(rot - math.pi / 2 + i * math.pi / 5),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(rot - math.pi / 2 + i * math.pi / 5))
               for i in range(10)]
    else:  # cross
        t = r * 0.33
        arm = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t),
               (-r, t), (-r, -t), (-t, -t)]
        c, s = math.cos(rot), math.sin(rot)
        pts = [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    draw.polygon(pts, fill=fill)


def render(groups: list[Group], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Draw the scene; positions, radii, rotations and the background vary per image."""
    w, h = size
    # Background: a muted base tone plus a linear gradient of random direction, strength and tint.
    # Captions never mention it, but it makes every picture an individual, as photos are.
    bg = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], dtype=np.float32) + rng.normal(0, 12, 3)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(15, 45)
    tint = rng.normal(0, 1, 3).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xs / w - 0.5) * np.cos(angle) + (ys / h - 0.5) * np.sin(angle))[..., None]
    noise = rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    canvas = np.clip(bg + ramp * strength * (1 + 0.5 * tint) + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    base = min(w, h)
    for g in groups:
        x0, x1, y0, y1 = _region(g.position, w, h)
        r = base * (0.065 if g.size == "small" else 0.15) * float(rng.uniform(0.88, 1.12))
        r = min(r, max(x1 - x0, y1 - y0) / (2.2 * g.count))  # several large ones must still fit apart
        placed: list[tuple[float, float]] = []
        for _ in range(g.count):
            for _attempt in range(40):
                cx = float(rng.uniform(x0 + r, max(x0 + r + 1, x1 - r)))
                cy = float(rng.uniform(y0 + r, max(y0 + r + 1, y1 - r)))
                if all((cx - px) ** 2 + (cy - py) ** 2 > (2.05 * r) ** 2 for px, py in placed):
                    break
            placed.append((cx, cy))
            _draw_shape(draw, g.shape, cx, cy, r, COLOURS[g.colour], float(rng.uniform(0, 2 * math.pi)))
    return img


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def plan_corpus(seed: int, samples: int, noise: float, stamped: float = 0.0) -> list[Plan]:
    """Decide each sample's kind up front; duplicates and mismatches borrow from earlier clean ones.
    ``stamped``: each would-be clean sample is ``STAMPED`` with this probability, drawn from a
    generator of its own, so the other draws (and, with 0, every kind) are those of an unstamped corpus."""
    rng = np.random.default_rng([seed, 0x5EED])
    stamp_rng = np.random.default_rng([seed, 0x57A4]) if stamped > 0 else None
    kinds, weights = list(NOISE_KINDS), np.array(list(NOISE_KINDS.values()))
    weights = weights / weights.sum()
    plans: list[Plan] = []
    clean: list[int] = []
    for i in range(samples):
        kind = "clean"
        if rng.random() < noise:
            kind = kinds[rng.choice(len(kinds), p=weights)]
        if kind in DUPLICATE_KINDS or kind == "mismatched_caption":
            if not clean:
                kind = "clean"
            else:
                plans.append(Plan(i, kind, clean[int(rng.integers(len(clean)))]))
                continue
        if kind == "clean" and stamp_rng is not None and stamp_rng.random() < stamped:
            kind = STAMPED  # not a source for duplicates and mismatches: those borrow clean content
        if kind == "clean":
            clean.append(i)
        plans.append(Plan(i, kind))
    return plans


def _clean_content(seed: int, index: int, mix: str = "default"):
    """The clean image/caption of ``index``: a pure function of (seed, index, mix)."""
    rng = sample_rng(seed, index)
    groups = make_scene(rng, mix)
    lang = _language(rng, mix)
    size = CANVASES[rng.integers(len(CANVASES))]
    quality = int(rng.integers(75, 96))
    img = render(groups, size, rng)
    return groups, lang, img, quality


def make_sample(seed: int, plan: Plan, mix: str = "default") -> tuple[bytes, str, dict, dict]:
    """Return (image bytes, caption, extra json fields, ground-truth row) for one planned sample."""
    rng = sample_rng(seed, plan.index, 1)
    truth = {"kind": plan.kind, "original_key": None, "transform": None}
    if plan.kind in DUPLICATE_KINDS:
        groups, lang, img, quality = _clean_content(seed, plan.source, mix)
        truth["original_key"] = sample_key(plan.source)
        if plan.kind == "exact_duplicate":
            data = encode_jpeg(img, quality)
        else:
            data, truth["transform"] = _near_copy(img, quality, rng)
            lang = _language(rng, mix)
        text = caption(groups, lang)
    else:
        groups, lang, img, quality = _clean_content(seed, plan.index, mix)
        text = caption(groups, lang)
        if plan.kind == "mismatched_caption":
            src_groups, lang, _, _ = _clean_content(seed, plan.source, mix)
            text = caption(src_groups, lang)
            truth["original_key"] = sample_key(plan.source)
        elif plan.kind == "small_image":
            side = int(rng.integers(48, 190))
            img = render(groups, (side, side) if rng.random() < 0.5 else (side, int(side * 1.3)), rng)
        elif plan.kind == "extreme_aspect":
            long, short = int(rng.integers(760, 1100)), int(rng.integers(200, 240))
            img = render(groups, (long, short) if rng.random() < 0.5 else (short, long), rng)
        elif plan.kind == "empty_caption":
            text = ["", " ", "\n", "  \t"][rng.integers(4)]
        elif plan.kind == "boilerplate_caption":
            text = BOILERPLATE[rng.integers(len(BOILERPLATE))].format(n=int(rng.integers(0, 99999)))
        elif plan.kind == STAMPED:
            img = stamp(img, rng)
        data = encode_jpeg(img, quality)
        if plan.kind == "corrupt_image":
            data = data[:20] + rng.bytes(len(data) - 20)  # JPEG header, garbage body
        elif plan.kind == "truncated_image":
            data = data[: int(len(data) * float(rng.uniform(0.3, 0.7)))]
    truth["scene"] = json.dumps([g.__dict__ for g in groups], sort_keys=True)
    return data, text, {"language": lang}, truth


def stamp(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A watermark over the whole picture, as stock-photo previews carry it: one word of
    ``WATERMARKS`` in white, tiled in staggered rows turned 20-40 degrees either way, at 40-60%
    opacity, its letters 15-20% of the shorter side high (Pillow's built-in FreeType font, so the
    pixels are the same wherever Pillow's version is)."""
    w, h = img.size
    text = WATERMARKS[rng.integers(len(WATERMARKS))]
    font = ImageFont.load_default(size=max(8, round(min(w, h) * float(rng.uniform(0.15, 0.2)))))
    opacity = round(255 * float(rng.uniform(0.4, 0.6)))
    angle = float(rng.uniform(20, 40)) * (1 if rng.random() < 0.5 else -1)
    side = 2 * math.ceil(math.hypot(w, h))  # a square that still covers the picture once turned
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), text + "   ", font=font)
    step_x, step_y = right - left, round((bottom - top) * 2.5)
    for row, y in enumerate(range(0, side, step_y)):
        for x in range(-step_x + (row % 2) * step_x // 2, side, step_x):
            draw.text((x, y), text, font=font, fill=opacity)
    mask = mask.rotate(angle, resample=Image.BILINEAR)
    x0, y0 = (side - w) // 2, (side - h) // 2
    return Image.composite(Image.new("RGB", (w, h), (255, 255, 255)), img, mask.crop((x0, y0, x0 + w, y0 + h)))


def _near_copy(img: Image.Image, quality: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-encoded, rescaled or slightly cropped copy, as re-uploads on the web are."""
    kind = ["reencode", "rescale", "crop"][rng.integers(3)]
    if kind == "rescale":  # uniform, and never below the 200-px side the basic filter asks for
        f = max(float(rng.uniform(0.75, 0.95)), 200 / min(img.size))
        img = img.resize((round(img.width * f), round(img.height * f)), Image.BICUBIC)
    elif kind == "crop":  # 1-2% off each side
        dx, dy = int(img.width * rng.uniform(0.01, 0.02)), int(img.height * rng.uniform(0.01, 0.02))
        img = img.crop((dx, dy, img.width - dx, img.height - dy))
    q = int(rng.integers(60, 96))
    if q == quality:
        q -= 5
    return encode_jpeg(img, q), kind


def write_shard(out_dir: str, seed: int, shard_id: int, plans: list[Plan], mix: str = "default") -> list[dict]:
    """Write one raw shard in img2dataset's layout; return its ground-truth rows."""
    start = time.time()
    members, rows, truth_rows = [], [], []
    for plan in plans:
        key = sample_key(plan.index)
        data, text, extra, truth = make_sample(seed, plan, mix)
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except Exception:  # corrupt bytes: the header may still be readable, or not
            width = height = None
        meta = {"url": f"synth://{seed}/{key}.jpg", "caption": text, "key": key, "status": "success",
                "error_message": None, "width": width, "height": height,
                "original_width": width, "original_height": height, "exif": None,
                "sha256": None, **extra}
        members.append((key, {"jpg": data, "txt": text, "json": meta}))
        rows.append(meta)
        truth_rows.append({"key": key, **truth})
    name = f"{shard_id:05d}"
    write_tar(os.path.join(out_dir, f"{name}.tar"), members)
    table = pa.Table.from_pylist(rows)
    with atomic_path(os.path.join(out_dir, f"{name}.parquet")) as tmp:
        pq.write_table(table, tmp)
    stats = {"count": len(plans), "successes": len(plans), "failed_to_download": 0,
             "failed_to_resize": 0, "duration": time.time() - start, "start_time": start,
             "end_time": time.time(), "status_dict": {"success": len(plans)}}
    with atomic_path(os.path.join(out_dir, f"{name}_stats.json")) as tmp:
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=2)
    return truth_rows


def _write_shard_args(args):
    return write_shard(*args)


def generate(out_dir: str, samples: int, seed: int = 0, noise: float = 0.3,
             shard_size: int = 1000, processes: int = 1, mix: str = "default", stamped: float = 0.0) -> str:
    """Write the corpus to ``out_dir``; return the path of its ground-truth file. ``stamped``: see
    the module doc (0, the default, makes no draw for it)."""
    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be within [0, 1], got {noise}")
    if not 0 <= stamped <= 1:
        raise ValueError(f"stamped must be within [0, 1], got {stamped}")
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    os.makedirs(out_dir, exist_ok=True)
    plans = plan_corpus(seed, samples, noise, stamped)
    jobs = [(out_dir, seed, s, plans[s * shard_size:(s + 1) * shard_size], mix)
            for s in range(math.ceil(samples / shard_size))]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            results = list(pool.map(_write_shard_args, jobs))
    else:
        results = [write_shard(*job) for job in jobs]
    truth = pa.Table.from_pylist([row for rows in results for row in rows])
    path = os.path.join(out_dir, "ground_truth.parquet")
    with atomic_path(path) as tmp:
        pq.write_table(truth, tmp)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.synth", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder for the raw shards")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.3, help="fraction of samples that are noise")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--mix", choices=MIXES, default="default",
                    help="default: 5 languages, concepts uniform; skewed: 12 languages, a long tail")
    ap.add_argument("--stamped", type=float, default=0.0,
                    help="share of would-be clean samples watermarked over the scene (kind stamped)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    t0 = time.time()
    path = generate(args.out, args.samples, args.seed, args.noise, args.shard_size, args.processes, args.mix,
                    args.stamped)
    kinds = pq.read_table(path, columns=["kind"]).column("kind").to_pylist()
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"wrote {args.samples} samples to {args.out} in {time.time() - t0:.1f}s; ground truth: {path}")
    print("  " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
