"""A tiny raw corpus for the report and inspect tests: two languages, a duplicate group, a decode failure.

Built from clean scenes of ``curate.synth`` (which the demo scorer knows), rewritten into one raw
shard: three English and three Spanish samples, two exact copies of the first English image under
other keys (a group of three), a caption swapped onto another image (a low score), and an image
member that is not an image (``unreadable_image``).
"""
import json
import os

from curate import synth
from curate.io import iter_tar_samples, write_tar

COPIES, BROKEN, SWAPPED = ("en-0-copy1", "en-0-copy2"), "broken", "swapped"


def _sample(key: str, fields: dict, caption: bytes | None = None, image: bytes | None = None) -> tuple[str, dict]:
    meta = json.loads(fields["json"])
    meta["key"] = key
    return key, {"jpg": image if image is not None else fields["jpg"], "txt": caption or fields["txt"], "json": meta}


def write(folder: str) -> str:
    """Write the corpus into ``folder``/raw/00000.tar; returns that folder."""
    scenes = os.path.join(folder, "scenes")
    synth.generate(scenes, 40, seed=3, noise=0.0)
    by_language: dict[str, list] = {}
    for _key, fields in iter_tar_samples(os.path.join(scenes, "00000.tar")):
        by_language.setdefault(json.loads(fields["json"])["language"], []).append(fields)
    en, es = by_language["en"][:4], by_language["es"][:3]
    members = [_sample(f"en-{i}", f) for i, f in enumerate(en[:3])]
    members += [_sample(key, en[0]) for key in COPIES]
    members += [_sample(f"es-{i}", f) for i, f in enumerate(es)]
    members.append(_sample(SWAPPED, en[3], caption=es[0]["txt"]))
    members.append(_sample(BROKEN, en[3], image=b"this is not an image at all"))
    raw = os.path.join(folder, "raw")
    os.makedirs(raw)
    write_tar(os.path.join(raw, "00000.tar"), members)
    return raw
