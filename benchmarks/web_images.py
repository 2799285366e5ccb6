"""Web-sized JPEGs (about 1024x768) from real photographs that ship inside pip wheels.

Each image is a seeded random crop of one of ``curate.photo_corpus.real_photos()`` (scikit-image's and
scikit-learn's photographs), upscaled bicubically by a random factor so that the crop is covered,
mirrored at random, saved as JPEG at a random quality in [80, 92] (4:2:0, as most web JPEGs). Every
byte is a function of the seed and the index. ``web_corpus`` writes them as raw shards in
img2dataset's layout, with a caption naming what the photo shows.

The photos are 300-1400 px, so most crops are upscaled and smoother than a camera's pictures:
they stand in for web images in size and JPEG structure, which is what decoding cost depends on.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from curate.io import sample_key, write_tar
from curate.photo_corpus import real_photos

WEB_SIZE = (1024, 768)


def _sources():
    return [(p, p.load()) for p in real_photos()]


def web_jpeg(sources, index: int, seed: int = 0, size: tuple[int, int] = WEB_SIZE) -> tuple[bytes, str]:
    """(JPEG bytes, what it shows) of web image ``index``: a pure function of (seed, index, size)."""
    rng = np.random.default_rng([seed, index, 0x3E8])
    photo, img = sources[int(rng.integers(len(sources)))]
    w, h = size
    cover = max(w / img.width, h / img.height) * float(rng.uniform(1.0, 1.6))
    big = img.resize((max(w, round(img.width * cover)), max(h, round(img.height * cover))), Image.BICUBIC)
    x, y = int(rng.integers(big.width - w + 1)), int(rng.integers(big.height - h + 1))
    crop = big.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=int(rng.integers(80, 93)))
    return buf.getvalue(), photo.subject


def web_jpegs(count: int, seed: int = 0, size: tuple[int, int] = WEB_SIZE) -> list[bytes]:
    sources = _sources()
    return [web_jpeg(sources, i, seed, size)[0] for i in range(count)]


def web_corpus(out_dir: str, samples: int, seed: int = 0, shard_size: int = 500,
               size: tuple[int, int] = WEB_SIZE) -> list[str]:
    """``samples`` web-sized photos as raw shards (KEY.jpg, KEY.txt, KEY.json) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    sources, paths = _sources(), []
    for start in range(0, samples, shard_size):
        members = []
        for i in range(start, min(samples, start + shard_size)):
            data, subject = web_jpeg(sources, i, seed, size)
            key = sample_key(i)
            caption = f"a photo of {subject}"
            members.append((key, {"jpg": data, "txt": caption, "json": {
                "key": key, "caption": caption, "url": f"web-corpus://{seed}/{key}.jpg", "status": "success",
                "width": size[0], "height": size[1], "original_width": size[0], "original_height": size[1]}}))
        path = os.path.join(out_dir, f"{start // shard_size:05d}.tar")
        write_tar(path, members)
        paths.append(path)
    return paths
