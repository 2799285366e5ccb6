"""All per-sample checks in order, as one pure function: raw members in, metadata plus a verdict out."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from curate.filters import basic, blocklist, select
from curate.filters.image import MISSING_IMAGE, PIL_DEFAULT_MAX_PIXELS, decode_image
from curate.filters.phash import phash
from PIL import Image

from curate.io import IMAGE_EXTS, sample_json
from curate.records import DECODE, READ, RawSample, Sample

MISSING_CAPTION = "missing_caption"
CAPTION_NOT_UTF8 = "caption_not_utf8"


@dataclass(frozen=True)
class BasicFilterParams:
    """DataComp's basic-filter defaults (see filters/basic.py)."""
    min_image_size: int = 200
    max_aspect_ratio: float = 3.0
    min_caption_words: int = 3
    min_caption_chars: int = 6
    boilerplate_captions: bool = True


@dataclass
class Verdict:
    sample: Sample
    image: Image.Image | None = None   # decoded RGB image when the sample passed
    reason: str | None = None
    stage: str | None = None
    detail: str | None = None



_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def read_caption(data: bytes) -> str:
    """A caption member's text: UTF-8 (raises UnicodeDecodeError otherwise), without the byte-order
    mark Windows editors put first (``utf-8-sig``: it is no part of the caption), control characters
    (other than tab and newline) as spaces: they break tokenisers and JSON consumers, and no caption
    means them."""
    return _CONTROL.sub(" ", data.decode("utf-8-sig"))


# Where each kind of list is first possible on a raw shard's sample: URL, domain and byte-hash lists
# when the sample is read (before its image is decoded), phash and term lists once the hash is
# computed and the caption read (decode). Ingest applies URL and domain lists before any request.
LIST_STAGES = {**dict.fromkeys((*blocklist.HASH_KINDS, blocklist.URL, blocklist.DOMAIN), READ),
               blocklist.PHASH: DECODE, blocklist.TERM: DECODE}


def _digests(data: bytes, sha256: str, lists: blocklist.Blocklists) -> dict[str, str]:
    """The image's hex digests that the hash lists need (sha256 is always computed)."""
    return {"sha256": sha256, **{k: hashlib.new(k, data).hexdigest() for k in lists.kinds() & {"md5", "sha1"}}}


def _listed(sample: Sample, found: blocklist.Match) -> Verdict:
    return Verdict(sample, reason=found.reason, stage=LIST_STAGES[found.kind], detail=found.detail)


def check_lists(sample: Sample, lists: blocklist.Blocklists) -> Verdict | None:
    """The block and opt-out lists on a decoded sample's metadata (stored scores: url, sha256, phash,
    caption, language), in decode_sample's order; the row's stage is where the list's kind is first
    possible (``LIST_STAGES``), as if applied there. md5 and sha1 lists need the bytes: not here."""
    found = lists.check(url=sample.url, digests={"sha256": sample.sha256}, caption=sample.caption,
                        language=sample.language, phash=sample.phash)
    return _listed(sample, found) if found else None


def decode_sample(raw: RawSample, max_image_pixels: int = PIL_DEFAULT_MAX_PIXELS, detect_language: bool = True,
                  reduce_to: int | None = None, lists: blocklist.Blocklists | None = None) -> Verdict:
    """Read the caption and decode the image; a sample that cannot be scored gets its reason here.

    ``reduce_to``: decode a large JPEG at reduced size for a scorer whose input is this many pixels
    (filters.image.decode_image; the perceptual hash is then computed on that image too).

    The sample's language is set as soon as its caption is read (``select.caption_language``), so every
    decision row from here on, a drop or a keep, names it.

    ``lists`` (block and opt-out lists), each where it is first possible: URL, domain and byte hashes
    before the caption is read and the image decoded (a listed image is never decoded), terms once the
    caption and its language are known, perceptual hashes once computed.
    """
    image_ext = next((ext for ext in IMAGE_EXTS if ext in raw.fields), None)
    data = raw.fields.get(image_ext) if image_ext else None
    meta = sample_json(raw.fields)
    sample = Sample(key=raw.key, shard_index=raw.shard_index, shard_path=raw.shard_path,
                    member_index=raw.member_index, image_ext=image_ext,
                    language=meta.get("language") if isinstance(meta.get("language"), str) else None,
                    url=meta.get("url") if isinstance(meta.get("url"), str) else None,
                    sha256=hashlib.sha256(data).hexdigest() if data else None)
    if lists and (found := lists.check_url(sample.url) or (
            data and lists.check_digests(_digests(data, sample.sha256, lists)))):
        return _listed(sample, found)
    members = f"members: {', '.join(sorted(raw.fields)) or 'none'}"  # a dotted key shows as 'b.jpg'
    if "txt" not in raw.fields:
        return Verdict(sample, reason=MISSING_CAPTION, stage=DECODE, detail=members)
    try:
        caption = read_caption(raw.fields["txt"])
    except UnicodeDecodeError as e:
        return Verdict(sample, reason=CAPTION_NOT_UTF8, stage=DECODE, detail=str(e))
    # Sample is frozen (elements are never mutated once emitted): each step makes a new one.
    sample = replace(sample, caption=caption,
                     language=select.caption_language(caption, sample.language, detect_language))
    if lists and (found := lists.check_caption(caption, sample.language)):
        return _listed(sample, found)
    if data is None:
        return Verdict(sample, reason=MISSING_IMAGE, stage=DECODE, detail=members)
    decoded = decode_image(data, max_image_pixels, reduce_to)  # the format comes from the bytes, whatever the member's name
    sample = replace(sample, width=decoded.width, height=decoded.height, image_format=decoded.format)
    if decoded.reason:
        return Verdict(sample, reason=decoded.reason, stage=DECODE, detail=decoded.detail)
    sample = replace(sample, phash=phash(decoded.image))  # the copy signal of near dedup (filters/phash.py)
    if lists and (found := lists.check_phash(sample.phash)):
        return _listed(sample, found)
    return Verdict(sample, image=decoded.image)


def basic_filter(sample: Sample, params: BasicFilterParams) -> str | None:
    """DataComp's basic filter on a decoded sample's metadata: the first failing rule's reason.

    It reads only metadata (size, caption), so it can be re-run on stored scores without images.
    """
    checks = [
        lambda: basic.image_too_small(sample.width, sample.height, params.min_image_size),
        lambda: basic.extreme_aspect_ratio(sample.width, sample.height, params.max_aspect_ratio),
        lambda: basic.caption_too_short(sample.caption, params.min_caption_words, params.min_caption_chars),
        lambda: basic.boilerplate_caption(sample.caption) if params.boilerplate_captions else None,
    ]
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None
