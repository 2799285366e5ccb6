"""Perceptual hash: a copy signal that needs no model.

pHash (Zauner 2010; the variant of imagehash and of hackerfactor's "Looks Like It"): the image in
grey at 32x32, its 2-D DCT, the 8x8 lowest frequencies, each bit set where the coefficient is above
their median. Re-encoding, rescaling, small crops and colour shifts move few of the 64 bits; distinct
photographs differ in about half. A CLIP embedding, by contrast, is a semantic signal: distinct
photos of the same kind of thing lie close, and a model that knows only its training world puts
every foreign image close to every other.

Hashes are stored as 16 hex digits. For search, a hash becomes a vector of 64 entries +-1/8 (unit
length), so that the cosine of two such vectors is exactly 1 - distance/32 and the embedding search
(``filters.dedup``) finds hash pairs too: Hamming distance <= d  <=>  cosine >= 1 - d/32.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

BITS = 64


def phash(image: Image.Image) -> str:
    """The image's 64-bit pHash as 16 hex digits (imagehash, a maintained implementation)."""
    import imagehash

    return str(imagehash.phash(image, hash_size=8))


def distance(a: str, b: str) -> int:
    """Hamming distance of two hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def to_vector(h: str) -> np.ndarray:
    """A hash as a unit float32 vector of +-1/8: cosine of two = 1 - distance / 32."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8))
    return (bits.astype(np.float32) * 2 - 1) / np.float32(8)


def cosine_at(max_distance: int) -> float:
    """The cosine of hash vectors at ``max_distance``: pairs at or above it are within the distance."""
    return 1 - 2 * max_distance / BITS


def distance_of_cosine(cos: float) -> int:
    """Inverse of ``cosine_at`` for the exact cosines of hash vectors."""
    return round((1 - cos) * BITS / 2)
