"""Foreign test corpora for duplicate detection: data that ``curate.synth`` did not make.

    python -m curate.photo_corpus OUT_DIR [--kind photos|fields] [--seed S] [--samples N]

``photos``: real photographs that ship inside pip wheels, read from the installed packages' folders
(never fetched): scikit-image's ``skimage/data/`` (astronaut, chelsea, coffee, rocket, moon, retina,
...) and scikit-learn's ``sklearn/datasets/images/`` (china.jpg, flower.jpg). Each photo is cut into
four non-overlapping quadrants, the distinct images; copies of seeded-random quadrants are added:
byte-exact copies, and near copies made by one transform each (see ``PHOTO_TRANSFORMS``).

``fields``: photo-like smooth random colour fields (low-resolution RGB noise upsampled bicubically,
plus a gradient), every original distinct, with exact and rescaled + re-encoded copies.

Both write raw shards in img2dataset's layout (``NNNNN.tar`` with ``KEY.jpg``/``KEY.txt``/``KEY.json``,
copies shuffled among the originals) and the ground truth OUTSIDE the shard folder (default
``OUT_DIR.truth.json``), so no filter can read it::

    {"corpus": "photos", "seed": 0, "counts": {"distinct": 68, ...}, "shards": {"00000.tar": 54, ...},
     "samples": {KEY: {"kind": "distinct" | "exact_copy" | "near_copy",
                       "original": KEY of the copied sample or null,
                       "transform": near copies' transform or null,
                       "source": what the image shows, e.g. "skimage/coffee.png#top-left",
                       "shard": "00000.tar"}}}

Every byte is a function of the seed (and of the installed Pillow, scikit-image and scikit-learn).
scikit-image and scikit-learn are test-only dependencies: ``pip install -e ".[test]"``.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from curate.io import sample_key, write_bytes, write_tar

# (package, folder inside it, file, what it shows). Left out on purpose: brick/grass/gravel (textures:
# their quadrants are the same picture four times), motorcycle_right (the stereo twin of
# motorcycle_left, a near copy by nature), and the drawings, logos and tiny test images.
PHOTO_FILES = [
    ("skimage", "data", "astronaut.png", "the astronaut Eileen Collins"),
    ("skimage", "data", "camera.png", "a cameraman with his tripod"),
    ("skimage", "data", "cell.png", "a cell floating in saline under a microscope"),
    ("skimage", "data", "chelsea.png", "Chelsea the tabby cat"),
    ("skimage", "data", "clock_motion.png", "a wall clock blurred by motion"),
    ("skimage", "data", "coffee.png", "a cup of coffee on a saucer"),
    ("skimage", "data", "coins.png", "old coins found in Pompeii"),
    ("skimage", "data", "hubble_deep_field.jpg", "galaxies in the Hubble deep field"),
    ("skimage", "data", "ihc.png", "a stained tissue sample for immunohistochemistry"),
    ("skimage", "data", "moon.png", "the surface of the moon"),
    ("skimage", "data", "motorcycle_left.png", "a motorcycle parked in a garage"),
    ("skimage", "data", "page.png", "a scanned page of printed text"),
    ("skimage", "data", "retina.jpg", "the retina of a human eye"),
    ("skimage", "data", "rocket.jpg", "a rocket launching into the sky"),
    ("skimage", "data", "text.png", "handwritten formulas on lined paper"),
    ("sklearn", "datasets/images", "china.jpg", "a temple in China"),
    ("sklearn", "datasets/images", "flower.jpg", "a flower in bloom"),
]
EXTRA = "scikit-image and scikit-learn (test extra): pip install -e '.[test]'"

# Photos whose shorter side is below 2 * MIN_QUADRANT_SIDE are upscaled (bicubic) until it is
# reached, so every quadrant is at least 240 px: DataComp's basic filter drops images under 200 px,
# and 240 keeps the shrunk near copies (85% scale, 4% border crop) above 200 too.
MIN_QUADRANT_SIDE = 240
QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]
QUALITY = 90  # JPEG quality of the originals and of every copy not re-encoded on purpose

# One transform per near copy of a photo, assigned in turn; each output is saved as a new JPEG.
PHOTO_TRANSFORMS = {
    "jpeg_q55": "re-encoded at JPEG quality 55",
    "rescale_85": "rescaled to 85% (bicubic)",
    "crop_border_4": "4% of the width and height cropped off each side",
    "brightness_8": "brightness +8%",
}
FIELD_TRANSFORM = "rescale_85_jpeg_q75"  # rescaled to 85% (bicubic), re-encoded at quality 75

PHOTO_CAPTIONS = [
    "a photograph, crop {n} of {subject}",
    "the {corner} quarter of a photo of {subject}",
    "{Subject}, cropped to the {corner} corner",
    "close crop from a picture of {subject}",
    "part of a photograph showing {subject}",
]
FIELD_CAPTIONS = [
    "an abstract blur of {c1} and {c2} colours",
    "a soft gradient from {c1} to {c2}, picture {n}",
    "smooth colour field number {n} in {c1} and {c2} tones",
    "a blurry background texture with {c1} and {c2} patches",
]
COLOUR_NAMES = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 50),
    "purple": (130, 50, 160), "orange": (240, 140, 30), "white": (240, 240, 240), "black": (20, 20, 20),
    "grey": (128, 128, 128), "brown": (120, 80, 40), "pink": (240, 150, 180), "teal": (40, 150, 150),
}


@dataclass(frozen=True)
class Photo:
    """One real photograph shipped inside an installed wheel."""
    name: str       # e.g. "skimage/coffee.png"
    path: str       # the file in the installed package
    subject: str    # what it shows, for captions

    def load(self) -> Image.Image:
        with Image.open(self.path) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class Item:
    """One planned sample before keys are assigned; ``original`` indexes the distinct items."""
    kind: str
    image: bytes
    caption: str
    source: str
    original: int | None = None
    transform: str | None = None


def _package_dir(package: str) -> str:
    """The installed package's folder, found without importing it (imports are slow and may fetch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"curate.photo_corpus needs {EXTRA}")
    return next(iter(spec.submodule_search_locations))


def real_photos() -> list[Photo]:
    """The photographs of ``PHOTO_FILES`` found on disk in the installed scikit-image and scikit-learn.

    Files a package version does not ship are skipped; no network is used.
    """
    photos = []
    for package, folder, file, subject in PHOTO_FILES:
        path = os.path.join(_package_dir(package), folder, file)
        if os.path.isfile(path):
            photos.append(Photo(f"{package}/{file}", path, subject))
    return photos


def encode_jpeg(img: Image.Image, quality: int = QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def quadrants(img: Image.Image) -> list[Image.Image]:
    """Four non-overlapping quadrants (top-left, top-right, bottom-left, bottom-right), each at least
    ``MIN_QUADRANT_SIDE`` px on its shorter side (the photo is upscaled first when needed)."""
    short = min(img.size)
    if short < 2 * MIN_QUADRANT_SIDE:
        f = 2 * MIN_QUADRANT_SIDE / short
        img = img.resize((max(round(img.width * f), 2 * MIN_QUADRANT_SIDE),
                          max(round(img.height * f), 2 * MIN_QUADRANT_SIDE)), Image.BICUBIC)
    w, h = img.width // 2, img.height // 2
    return [img.crop((x, y, x + w, y + h)) for y in (0, h) for x in (0, w)]


def near_copy(data: bytes, transform: str) -> bytes:
    """A photo's near copy: decode the original JPEG, apply one ``PHOTO_TRANSFORMS`` entry, save."""
    img = decode(data)
    if transform == "jpeg_q55":
        return encode_jpeg(img, 55)
    if transform == "rescale_85":
        img = img.resize((round(img.width * 0.85), round(img.height * 0.85)), Image.BICUBIC)
    elif transform == "crop_border_4":
        dx, dy = round(img.width * 0.04), round(img.height * 0.04)
        img = img.crop((dx, dy, img.width - dx, img.height - dy))
    elif transform == "brightness_8":
        img = ImageEnhance.Brightness(img).enhance(1.08)
    else:
        raise ValueError(f"unknown transform {transform!r}; known: {', '.join(PHOTO_TRANSFORMS)}")
    return encode_jpeg(img)


def _photo_caption(template: str, photo: Photo, quadrant: int) -> str:
    return template.format(n=quadrant + 1, corner=QUADRANTS[quadrant], subject=photo.subject,
                           Subject=photo.subject[0].upper() + photo.subject[1:])


def _add_copies(rng: np.random.Generator, items: list[Item], exact: int, near: int,
                near_item) -> list[Item]:
    """``exact`` byte-exact and ``near`` near copies, each of a different seeded-random original.

    Exact copies reuse the original's caption; ``near_item(original_index, copy_number)`` makes a
    near copy (image and caption)."""
    if exact + near > len(items):
        raise ValueError(f"{exact + near} copies need as many distinct originals; there are {len(items)}")
    chosen = [int(i) for i in rng.choice(len(items), size=exact + near, replace=False)]
    copies = [Item("exact_copy", items[i].image, items[i].caption, items[i].source, i) for i in chosen[:exact]]
    copies += [near_item(i, n) for n, i in enumerate(chosen[exact:])]
    return copies


def _shuffle(rng: np.random.Generator, items: list[Item], tries: int = 1000) -> list[Item]:
    """A seeded order in which no sample sits next to another of its duplicate group."""
    def group(pos):  # distinct items are listed first, so a distinct item's group is its own index
        return items[pos].original if items[pos].original is not None else pos

    for _ in range(tries):
        order = [int(i) for i in rng.permutation(len(items))]
        if all(group(a) != group(b) for a, b in itertools.pairwise(order)):
            return [items[i] for i in order]
    raise ValueError("could not place the copies apart from their originals; use fewer copies")


def default_truth_path(out_dir: str) -> str:
    """``OUT_DIR.truth.json``: beside the shard folder, never inside it, and named after it (two
    corpora in sibling folders keep their own truth)."""
    return os.path.abspath(out_dir).rstrip(os.sep) + ".truth.json"


def _write(out_dir: str, truth_path: str | None, corpus: str, seed: int, items: list[Item],
           shards: int) -> dict:
    """Shuffled items -> ``shards`` tars in ``out_dir`` and the truth file outside it."""
    out_dir = os.path.abspath(out_dir)
    truth_path = os.path.abspath(truth_path or default_truth_path(out_dir))
    if os.path.commonpath([out_dir, truth_path]) == out_dir:
        raise ValueError(f"the truth file {truth_path} must not lie inside the shard folder {out_dir}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    os.makedirs(out_dir, exist_ok=True)
    per_shard = -(-len(items) // shards)
    keys = [sample_key(i) for i in range(len(items))]
    # Copies name their original by key: map each distinct image (by its unique source) to its key.
    distinct_keys = {item.source: key for key, item in zip(keys, items) if item.kind == "distinct"}
    assert len(distinct_keys) == sum(item.kind == "distinct" for item in items), "distinct sources must be unique"
    samples, sizes = {}, {}
    for s in range(shards):
        name = f"{s:05d}.tar"
        members = []
        for key, item in zip(keys[s * per_shard:(s + 1) * per_shard], items[s * per_shard:(s + 1) * per_shard]):
            with Image.open(io.BytesIO(item.image)) as im:
                width, height = im.size
            meta = {"url": f"photo-corpus://{corpus}/{seed}/{key}.jpg", "caption": item.caption, "key": key,
                    "status": "success", "error_message": None, "width": width, "height": height,
                    "original_width": width, "original_height": height, "exif": None, "sha256": None}
            members.append((key, {"jpg": item.image, "txt": item.caption, "json": meta}))
            samples[key] = {"kind": item.kind, "original": None if item.kind == "distinct" else distinct_keys[item.source],
                            "transform": item.transform, "source": item.source, "shard": name}
        write_tar(os.path.join(out_dir, name), members)
        sizes[name] = len(members)
    counts = {k: sum(r["kind"] == k for r in samples.values()) for k in ("distinct", "exact_copy", "near_copy")}
    truth = {"corpus": corpus, "seed": seed, "counts": counts, "shards": sizes, "samples": samples}
    os.makedirs(os.path.dirname(truth_path), exist_ok=True)
    write_bytes(truth_path, json.dumps(truth, indent=1, sort_keys=True).encode("utf-8"))
    return truth


def photo_corpus(out_dir: str, seed: int = 0, *, exact_copies: int = 12, near_copies: int = 28,
                 shards: int = 2, truth_path: str | None = None) -> dict:
    """Quadrants of ``real_photos()`` as distinct images, plus exact and near copies, as raw shards.

    Near copies cycle through ``PHOTO_TRANSFORMS`` and get a caption from another template than their
    original's; exact copies repeat the original's caption. Returns the truth dict written to
    ``truth_path`` (default ``OUT_DIR.truth.json``; never inside ``out_dir``).
    """
    rng = np.random.default_rng([seed, 0x9407])
    photos = real_photos()
    if not photos:
        raise FileNotFoundError(f"no photographs found in the installed packages; install {EXTRA}")
    items = []
    for photo in photos:
        for q, crop in enumerate(quadrants(photo.load())):
            template = PHOTO_CAPTIONS[int(rng.integers(len(PHOTO_CAPTIONS)))]
            items.append(Item("distinct", encode_jpeg(crop), _photo_caption(template, photo, q),
                              f"{photo.name}#{QUADRANTS[q]}"))
    where = [(photo, q) for photo in photos for q in range(4)]
    transforms = list(PHOTO_TRANSFORMS)

    def near_item(i: int, n: int) -> Item:
        photo, q = where[i]
        others = [t for t in PHOTO_CAPTIONS if _photo_caption(t, photo, q) != items[i].caption]
        caption = _photo_caption(others[int(rng.integers(len(others)))], photo, q)
        transform = transforms[n % len(transforms)]
        return Item("near_copy", near_copy(items[i].image, transform), caption, items[i].source, i, transform)

    items += _add_copies(rng, items, exact_copies, near_copies, near_item)
    return _write(out_dir, truth_path, "photos", seed, _shuffle(rng, items), shards)


def colour_name(rgb, exclude: str | None = None) -> str:
    """The nearest of ``COLOUR_NAMES`` (other than ``exclude``) to an RGB triple."""
    names = [n for n in COLOUR_NAMES if n != exclude]
    return min(names, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOUR_NAMES[n], rgb)))


def random_field(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """One smooth random colour field (256-384 px a side) and the names of two of its colours."""
    width, height = (int(v) for v in rng.integers(256, 385, size=2))
    cells = int(rng.integers(3, 9))
    low = rng.uniform(0, 255, size=(cells, cells, 3))
    # A random linear gradient of random colour across the whole field.
    ys, xs = np.mgrid[0:cells, 0:cells] / max(cells - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys)[..., None]
    low = np.clip(low + ramp * rng.uniform(-120, 120, size=3), 0, 255)
    img = Image.fromarray(low.astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
    half = cells // 2 or 1
    first, second = low[:half, :half].mean((0, 1)), low[half:, half:].mean((0, 1))
    c1 = colour_name(first)
    # Two corners of one hue: name the second by its nearest other colour ("teal and grey").
    c2 = colour_name(second, exclude=c1)
    return img, c1, c2


def random_fields_corpus(out_dir: str, samples: int = 400, seed: int = 0, *, exact_fraction: float = 0.08,
                         near_fraction: float = 0.08, shards: int = 2, truth_path: str | None = None) -> dict:
    """Smooth random colour fields, all distinct, plus exact and rescaled + re-encoded copies.

    ``round(samples * fraction)`` samples of each copy kind, each of a different random original;
    near copies are rescaled to 85% and re-encoded at quality 75 (``FIELD_TRANSFORM``). Captions
    name two of the field's colours; near copies get another template. Returns the truth dict
    written to ``truth_path`` (default ``OUT_DIR.truth.json``).
    """
    exact, near = round(samples * exact_fraction), round(samples * near_fraction)
    if samples < 1 or exact + near > samples - exact - near:
        raise ValueError(f"{samples} samples with {exact} exact and {near} near copies: too few originals")
    rng = np.random.default_rng([seed, 0xF1E1D])
    items, colours = [], []
    for n in range(samples - exact - near):
        img, c1, c2 = random_field(rng)
        template = FIELD_CAPTIONS[int(rng.integers(len(FIELD_CAPTIONS)))]
        items.append(Item("distinct", encode_jpeg(img), template.format(c1=c1, c2=c2, n=n + 1), f"field-{n + 1}"))
        colours.append((c1, c2))

    def near_item(i: int, _: int) -> Item:
        c1, c2 = colours[i]
        captions = [t.format(c1=c1, c2=c2, n=i + 1) for t in FIELD_CAPTIONS]
        others = [c for c in captions if c != items[i].caption]
        img = decode(items[i].image)
        img = img.resize((round(img.width * 0.85), round(img.height * 0.85)), Image.BICUBIC)
        return Item("near_copy", encode_jpeg(img, 75), others[int(rng.integers(len(others)))],
                    items[i].source, i, FIELD_TRANSFORM)

    items += _add_copies(rng, items, exact, near, near_item)
    return _write(out_dir, truth_path, "fields", seed, _shuffle(rng, items), shards)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.photo_corpus", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder for the raw shards")
    ap.add_argument("--kind", choices=["photos", "fields"], default="photos",
                    help="real photo quadrants (default) or smooth random colour fields")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=400, help="fields only: number of samples")
    ap.add_argument("--truth", help="ground-truth JSON path (default: OUT_DIR.truth.json)")
    args = ap.parse_args(argv)
    try:
        if args.kind == "photos":
            truth = photo_corpus(args.out_dir, args.seed, truth_path=args.truth)
        else:
            truth = random_fields_corpus(args.out_dir, args.samples, args.seed, truth_path=args.truth)
    except (ValueError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = truth["counts"]
    truth_file = os.path.abspath(args.truth or default_truth_path(args.out_dir))
    print(f"{args.kind}: {sum(c.values())} samples ({c['distinct']} distinct, {c['exact_copy']} exact copies, "
          f"{c['near_copy']} near copies) in {len(truth['shards'])} shards in {os.path.abspath(args.out_dir)}; "
          f"ground truth in {truth_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
