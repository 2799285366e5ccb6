"""Reduced-size JPEG decoding (scorer.decode: cpu_fast, ingest's resizer) and exports that decode
each image once."""
from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pytest
from curate.filters.image import TRUNCATED_IMAGE, decode_image, reduced_scale
from PIL import Image

from curate import run, synth
from curate.io import write_tar


def _photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour gradients with some texture: JPEG-compressible like a photo, any size."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 100 * np.cos(4 * y - 3 * x), 255 * x * y], -1)
    noise = np.asarray(Image.fromarray(rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
                       .resize((w, h), Image.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(0.7 * base + 0.3 * noise, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _psnr(a, b) -> float:
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()
    return 10 * np.log10(255 ** 2 / mse) if mse else float("inf")


WEB = _jpeg(_photo_like((1024, 768)))


def test_reduced_scale_is_the_largest_that_keeps_both_sides_at_the_target():
    assert reduced_scale(1024, 768, 64) == 8
    assert reduced_scale(1024, 768, 224) == 2
    assert reduced_scale(256, 256, 64) == 4
    assert reduced_scale(448, 447, 224) == 1  # under twice the target on one side: full decode
    assert reduced_scale(128, 5000, 64) == 2
    assert reduced_scale(50, 60, 64) == 1  # smaller than the target


def test_reduced_decode_reports_the_stored_size_and_resizes_alike():
    full, fast = decode_image(WEB), decode_image(WEB, reduce_to=64)
    assert (fast.width, fast.height, fast.format) == (full.width, full.height, full.format) == (1024, 768, "JPEG")
    assert fast.image.size == (128, 96) and full.image.size == (1024, 768)
    # After the same bicubic resize to the target, the two are close (libjpeg's scaled IDCT).
    assert _psnr(full.image.resize((85, 64), Image.BICUBIC), fast.image.resize((85, 64), Image.BICUBIC)) > 30


def test_what_is_not_a_large_jpeg_decodes_as_without_it():
    for size in ((100, 90), (50, 40)):  # under twice the target, and under the target
        small = _jpeg(_photo_like(size))
        assert decode_image(small, reduce_to=64).image.tobytes() == decode_image(small).image.tobytes()
    png = io.BytesIO()
    _photo_like((600, 400)).save(png, format="PNG")
    fast = decode_image(png.getvalue(), reduce_to=64)
    assert fast.image.size == (600, 400) and fast.image.tobytes() == decode_image(png.getvalue()).image.tobytes()


def test_reduced_decode_keeps_drop_reasons_and_exif_rotation():
    cut = WEB[: len(WEB) // 2]
    assert decode_image(cut).reason == decode_image(cut, reduce_to=64).reason == TRUNCATED_IMAGE
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: width and height swap
    turned = _jpeg(_photo_like((1024, 768)), exif=exif.tobytes())
    full, fast = decode_image(turned), decode_image(turned, reduce_to=64)
    assert (full.width, full.height) == (fast.width, fast.height) == (768, 1024)
    assert fast.image.size == (96, 128)


def test_decode_setting_gives_the_scorer_input_side_and_joins_the_resume_settings():
    from curate.pipelines import score

    from curate.models.clip import ScorerSpec
    from curate.scoring import reduced_decode_size

    assert reduced_decode_size(ScorerSpec(), "cpu") is None
    assert reduced_decode_size(ScorerSpec(), "cpu_fast") == 64  # the demo scorer's input
    cfg = {"scorer.model": "curate-demo-64", "scorer.pretrained": "demo", "scorer.device": "cpu",
           "scorer.precision": "auto", "scorer.batch_size": 8, "filters.max_image_pixels": 10 ** 8,
           "select.detect_language": True}
    settings = {m: score.checkpoint_settings({**cfg, "scorer.decode": m}) for m in ("cpu", "cpu_fast")}
    assert settings["cpu"] != settings["cpu_fast"]  # a rerun in the other mode rescores, never mixes


def _files(root: str) -> dict[str, bytes]:
    return {os.path.relpath(p, root): open(p, "rb").read() for p in sorted(glob.glob(f"{root}/**/*", recursive=True))
            if os.path.isfile(p) and "/." not in p and not p.endswith(("report.json", "report.html"))}


def test_cpu_fast_scores_are_the_same_bytes_with_one_or_two_workers(tmp_path):
    """Two worker threads split the shards between them; worker processes would triple this test's
    time and add nothing here: the reduced decode is a function of the image bytes alone."""
    corpus = str(tmp_path / "corpus")
    synth.generate(corpus, 24, seed=4, noise=0.2, shard_size=8)
    outs = []
    for workers in ([], ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]):
        out = str(tmp_path / f"out{len(workers)}")
        report = run.run(["--pipeline", "score", "--input", corpus, "--output", out, "--set", "scorer.decode=cpu_fast",
                          "--set", "scorer.batch_size=8", *workers])
        assert report["config"]["scorer.decode"] == "cpu_fast"  # how the stored scores were made
        outs.append(out)
    one, two = _files(outs[0]), _files(outs[1])
    assert one.keys() == two.keys() and any(k.startswith("embeddings/img_emb") for k in one)
    assert [k for k in one if one[k] != two[k]] == []


def test_exports_decode_each_image_once(tmp_path, monkeypatch):
    """Before: the export check and each of the four formats decoded every image (5 per image)."""
    import curate.exports.writing as writing

    members = []
    for i in range(12):
        key = f"{i:09d}"
        data = b"\xff\xd8\xff\xe0broken" if i == 5 else _jpeg(_photo_like((96, 80), seed=i))
        members.append((key, {"jpg": data, "txt": f"a smooth picture number {i}", "json": {"key": key}}))
    os.makedirs(tmp_path / "shards")
    write_tar(str(tmp_path / "shards" / "00000.tar"), members)
    calls = []
    monkeypatch.setattr(writing, "decode_image", lambda data, *a, **k: calls.append(data) or decode_image(data, *a, **k))
    out = str(tmp_path / "export")
    report = run.run(["--pipeline", "export", "--input", str(tmp_path / "shards"), "--output", out,
                      "--set", "formats=[contrastive, flava, llava, blip2]", "--set", "flava.unimodal=false"])
    assert len(calls) == len(set(calls)) == 12  # once per image, for the check and all four formats
    assert report["counts"]["kept"] == 11
    assert json.load(open(f"{out}/contrastive/sizes.json")) == json.load(open(f"{out}/blip2/sizes.json")) == {
        "00000.tar": 11}
    assert len(glob.glob(f"{out}/llava/images/00000/*.jpg")) == 11


def full_and_reduced(data: bytes, resizer) -> tuple[bytes, bytes]:
    """The Resizer's output for ``data`` with a full decode and with ingest's reduced decode."""
    from curate.ingest.resize import ReducedDecodeResizer

    return resizer(io.BytesIO(data))[0], ReducedDecodeResizer(resizer)(io.BytesIO(data))[0]


def test_ingest_resizer_decodes_large_jpegs_reduced_and_the_rest_as_img2dataset(monkeypatch):
    from img2dataset.resizer import Resizer

    from curate.ingest.resize import ReducedDecodeResizer, reduction

    assert reduction(1024, 768, 256, Resizer(256, "keep_ratio", False).resize_mode) == 2
    assert reduction(1024, 768, 512, Resizer(512, "keep_ratio_largest", True).resize_mode) == 2
    r = Resizer(256, "keep_ratio", False, encode_quality=95)
    full, fast = full_and_reduced(WEB, r)
    a, b = (Image.open(io.BytesIO(x)).convert("RGB") for x in (full, fast))
    assert a.size == b.size == (341, 256) and _psnr(a, b) > 35
    assert r(io.BytesIO(WEB))[1:] == ReducedDecodeResizer(r)(io.BytesIO(WEB))[1:]  # sizes, no error
    grey = _jpeg(_photo_like((1024, 768)).convert("L"))
    png = io.BytesIO()
    _photo_like((1024, 768)).save(png, format="PNG")
    tiny = _jpeg(_photo_like((100, 80)))
    for data in (_jpeg(_photo_like((500, 400))), tiny, grey, png.getvalue()):  # not reduced: img2dataset's bytes
        assert r(io.BytesIO(data)) == ReducedDecodeResizer(r)(io.BytesIO(data))
    picky = Resizer(256, "keep_ratio", False, min_image_size=800)
    assert ReducedDecodeResizer(picky)(io.BytesIO(WEB))[-1] == picky(io.BytesIO(WEB))[-1] == "image too small"


@pytest.mark.parametrize("mode", ["center_crop", "border"])
def test_ingest_resizer_other_modes_keep_the_output_size(mode):
    from img2dataset.resizer import Resizer

    full, fast = full_and_reduced(WEB, Resizer(200, mode, False))
    a, b = (Image.open(io.BytesIO(x)).convert("RGB") for x in (full, fast))
    assert a.size == b.size == (200, 200) and _psnr(a, b) > 30


def test_ingest_resizes_a_large_jpeg_through_the_reduced_decode():
    """The ingest config's resizer (ingest.image_size 512, keep_ratio_largest: DataComp's defaults)."""
    from curate.pipelines import ingest

    from curate.config import load
    from curate.ingest.download import make_resizer

    resize = make_resizer(ingest.settings(load("ingest", ingest.SCHEMA)))
    data, width, height, original_width, original_height, error = resize(io.BytesIO(WEB))
    assert (width, height, original_width, original_height, error) == (512, 384, 1024, 768, None)
    assert _psnr(Image.open(io.BytesIO(data)).convert("RGB"), decode_image(WEB).image.resize((512, 384), Image.BOX)) > 30


def test_ingest_reduced_decode_off_is_img2dataset_byte_for_byte():
    import dataclasses

    from curate.pipelines import ingest
    from img2dataset.resizer import Resizer

    from curate.config import load
    from curate.ingest.download import make_resizer

    s = dataclasses.replace(ingest.settings(load("ingest", ingest.SCHEMA)), reduced_decode=False)
    plain = Resizer(s.image_size, s.resize_mode, s.resize_only_if_bigger, encode_quality=s.encode_quality,
                    encode_format=s.encode_format, min_image_size=s.min_image_size,
                    max_aspect_ratio=s.max_aspect_ratio or float("inf"))
    assert make_resizer(s)(io.BytesIO(WEB)) == plain(io.BytesIO(WEB))


@pytest.mark.parametrize("mode", ["keep_ratio", "keep_ratio_largest", "center_crop", "border"])
def test_ingest_reduced_decode_gives_img2dataset_sizes_on_odd_sized_photos(mode, monkeypatch):
    """A real photo (scikit-image's chelsea) at sizes that do not divide by the DCT scale: the reduced
    decode runs (its OpenCV flag is seen) and lands on the Resizer's own output size."""
    import cv2
    from img2dataset.resizer import Resizer
    from skimage import data as skdata

    from curate.ingest.resize import ReducedDecodeResizer

    flags = []
    imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flag: flags.append(flag) or imdecode(buf, flag))
    photo = Image.fromarray(skdata.chelsea())
    r = Resizer(256, mode, False)
    for size in ((1250, 533), (1537, 1023), (777, 2333), (2049, 1031)):
        data = _jpeg(photo.resize(size, Image.BICUBIC))
        flags.clear()
        full = r(io.BytesIO(data))
        fast = ReducedDecodeResizer(r)(io.BytesIO(data))
        reduced = {f | cv2.IMREAD_IGNORE_ORIENTATION for f in
                   (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8)}
        assert any(f in reduced for f in flags), size  # the reduced path ran
        assert fast[1:] == full[1:], size  # width, height, original sizes, no error
        a, b = (Image.open(io.BytesIO(x[0])).convert("RGB") for x in (full, fast))
        assert _psnr(a, b) > 30, size
