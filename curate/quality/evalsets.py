"""The built-in evaluation suite, written in clip_benchmark's WebDataset layout.

    EVAL/<task>_<lang>/              one zero-shot classification set per physical concept and language
        test/0.tar, test/nshards.txt   KEY.jpg + KEY.cls (the class index)
        classnames.txt                 the class names in that language, one a line
        zeroshot_classification_templates.txt
    EVAL/retrieval_<lang>/           held-out image-caption pairs in that language
        test/0.tar, test/nshards.txt   KEY.jpg + KEY.txt
        dataset_type.txt               "retrieval"

clip_benchmark reads each folder as ``--dataset wds/<name> --dataset_root EVAL/<name>`` (its
``build_wds_dataset``), so a user's own export (``clip_benchmark_export_wds``: ImageNet, XM3600, ...)
sits beside these and is evaluated the same way.

Concept scenes hold one group of objects, so each of its five attributes (shape, colour, size,
count, position) is one unambiguous label; the same images serve the five tasks, and a task's tar
is shared by its languages (hard-linked where the file system allows). Retrieval pairs are
ordinary corpus scenes (one or two groups) captioned in one language. Everything is a pure
function of (seed, index), and the seeds are disjoint from the training pool's.

Templates: the corpus's captions are bare attribute phrases with no carrier sentence, so the
bare class name is the prompt (CLIP's "{}" template); class names are the words the captions use.
"""
from __future__ import annotations

import os
import shutil

from PIL import Image

from curate import synth
from curate.io import atomic_path, sample_key, write_tar

TASKS = ("shape", "colour", "size", "count", "position")
# Stored images are scaled so their shorter side is this (px): the trained models see 64 px, and
# decoding 256-px JPEGs dominated the evaluation's time.
STORED_SIDE = 128
TEMPLATES = ("{c}",)
RETRIEVAL = "retrieval"


def class_values(task: str) -> list:
    """The label space of a concept task, in a fixed order (the class index is a position in it)."""
    return {"shape": synth.SHAPES, "colour": list(synth.COLOURS), "size": synth.SIZES,
            "count": [1, 2, 3], "position": synth.POSITIONS}[task]


def class_names(task: str, lang: str) -> list[str]:
    """The words a caption in ``lang`` uses for each class of ``task`` (curate.synth's vocabulary)."""
    words = synth.VOCAB[lang][task]
    names = [words[v] for v in class_values(task)]
    return [n[0] if isinstance(n, tuple) else n for n in names]  # nouns: the singular


def concept_scene(seed: int, index: int) -> tuple[synth.Group, bytes]:
    """One evaluation image: a single group of objects with uniformly drawn attributes."""
    rng = synth.sample_rng(seed, index, 2)
    group = synth.Group(*(v[int(rng.integers(len(v)))] for v in (class_values(t) for t in
                        ("shape", "colour", "size", "count", "position"))))
    size = synth.CANVASES[int(rng.integers(len(synth.CANVASES)))]
    return group, _stored(synth.render([group], size, rng))


def retrieval_pair(seed: int, index: int, lang: str) -> tuple[bytes, str]:
    """One held-out pair: a corpus scene and its caption in ``lang``."""
    rng = synth.sample_rng(seed, index, 3)
    groups = synth.make_scene(rng)
    size = synth.CANVASES[int(rng.integers(len(synth.CANVASES)))]
    return _stored(synth.render(groups, size, rng)), synth.caption(groups, lang)


def _stored(img: Image.Image) -> bytes:
    scale = STORED_SIDE / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return synth.encode_jpeg(img, 90)


def _write_text(path: str, lines) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _write_split(folder: str, members: list[tuple[str, dict]]) -> str:
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    tar = os.path.join(folder, "test", "0.tar")
    write_tar(tar, members)
    _write_text(os.path.join(folder, "test", "nshards.txt"), ["1"])
    return tar


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def write_concept_tasks(out_dir: str, seed: int, images: int, languages=synth.LANGUAGES) -> list[str]:
    """One classification set per (task, language); returns their folders."""
    scenes = [concept_scene(seed, i) for i in range(images)]
    folders = []
    for task in TASKS:
        values = class_values(task)
        members = [(sample_key(i), {"jpg": data, "cls": str(values.index(getattr(group, task)))})
                   for i, (group, data) in enumerate(scenes)]
        shared = None
        for lang in languages:
            folder = os.path.join(out_dir, f"{task}_{lang}")
            if shared is None:
                shared = _write_split(folder, members)
            else:
                os.makedirs(os.path.join(folder, "test"), exist_ok=True)
                _link_or_copy(shared, os.path.join(folder, "test", "0.tar"))
                _write_text(os.path.join(folder, "test", "nshards.txt"), ["1"])
            _write_text(os.path.join(folder, "classnames.txt"), class_names(task, lang))
            _write_text(os.path.join(folder, "zeroshot_classification_templates.txt"), TEMPLATES)
            folders.append(folder)
    return folders


def write_retrieval_sets(out_dir: str, seed: int, pairs: int, languages=synth.LANGUAGES) -> list[str]:
    """One retrieval set per language, each from its own scenes; returns their folders."""
    folders = []
    for n, lang in enumerate(languages):
        folder = os.path.join(out_dir, f"{RETRIEVAL}_{lang}")
        members = []
        for i in range(pairs):
            data, text = retrieval_pair(seed + 1 + n, i, lang)
            members.append((sample_key(i), {"jpg": data, "txt": text}))
        _write_split(folder, members)
        _write_text(os.path.join(folder, "dataset_type.txt"), [RETRIEVAL])
        folders.append(folder)
    return folders


def write_suite(out_dir: str, seed: int, images_per_task: int, pairs_per_language: int,
                languages=synth.LANGUAGES) -> list[str]:
    """The whole built-in suite; ``seed`` must differ from the training pool's (and from seed + 1 ..
    seed + len(languages), used by the retrieval sets)."""
    os.makedirs(out_dir, exist_ok=True)
    return (write_concept_tasks(out_dir, seed, images_per_task, languages)
            + write_retrieval_sets(out_dir, seed, pairs_per_language, languages))

