"""scorer.decode: gpu, run here on device cpu: the device-side decode and resize against open_clip's
PIL transform, the per-sample fallback to the CPU path, and a run that decides as decode cpu does."""
from __future__ import annotations

import glob
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate import gpu_decode, run, synth
from curate.io import write_tar
from curate.models import clip


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photographs (scikit-image's wheel), RGB, 300-1000 px."""
    from curate.photo_corpus import real_photos

    return [p.load().convert("RGB") for p in real_photos()[:8]]


def _device_path(data: list[bytes], side: int) -> torch.Tensor:
    return gpu_decode.eval_transform(gpu_decode.decode_jpegs(data, "cpu"), side)


def test_sizes_and_crop_follow_torchvision():
    from torchvision.transforms import CenterCrop, Resize

    for w, h in ((512, 512), (451, 300), (300, 451), (1024, 768), (65, 1300), (50, 40)):
        nh, nw = gpu_decode.resized_size(h, w, 64)
        assert Resize(64)(Image.new("RGB", (w, h))).size == (nw, nh)
        top, left = gpu_decode.centre_crop_origin(nh, nw, 64)
        probe = torch.arange(nh * nw).view(1, nh, nw)
        assert torch.equal(CenterCrop(64)(probe), probe[:, top:top + 64, left:left + 64])


@pytest.mark.parametrize("model", ["curate-demo-64", "ViT-B-32"])
def test_device_resize_is_open_clips_pil_transform_within_one_level(photos, model):
    """Measured on these photos: at most 1 of 255 (the decoders give the same pixels; PIL rounds its
    fixed-point filter differently from torch's float one)."""
    spec = clip.ScorerSpec(model=model, pretrained="demo" if model == clip.DEMO_MODEL else "random")
    transform, side = clip.uint8_image_transform(spec), 64 if model == clip.DEMO_MODEL else 224
    data = [_jpeg(p) for p in photos]
    want = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in data])
    got = _device_path(data, side)
    assert got.dtype == torch.uint8 and got.shape == want.shape
    assert int((got.int() - want.int()).abs().max()) <= 1


def test_device_path_scores_as_the_cpu_path(photos):
    """The demo scorer on both paths' tensors: measured max |score difference| 0.00012 on these 8 photos
    (4 of them identical); asserted below 1e-3."""
    spec = clip.ScorerSpec(device="cpu")
    model, transform = clip.load_model(spec), clip.uint8_image_transform(spec)
    data = [_jpeg(p) for p in photos]
    tokens = clip.tokenizer(spec.model)(["a photograph"] * len(data))
    cpu = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in data])
    scores = [clip.cosine(*clip.encode(model, spec, images, tokens)) for images in (cpu, _device_path(data, 64))]
    assert np.abs(scores[0] - scores[1]).max() < 1e-3


def _cmyk_jpeg(img: Image.Image) -> bytes:
    return _jpeg(img.convert("CMYK"))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_only_plain_rgb_jpegs_go_to_the_device(photos):
    img = photos[0].resize((400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert gpu_decode.device_decodable(_jpeg(img), 20)
    for data in (_encoded(img, "PNG"), _encoded(img, "WEBP"), _jpeg(img.convert("L")), _cmyk_jpeg(img),
                 _jpeg(img, exif=exif.tobytes()), _jpeg(img.resize((630, 20))), b"not an image"):
        assert not gpu_decode.device_decodable(data, 20)
    assert gpu_decode.device_decodable(_jpeg(img.resize((630, 20))), 40)


def test_a_batch_with_a_bad_jpeg_decodes_the_rest():
    good = _jpeg(Image.new("RGB", (80, 60), (200, 30, 40)))
    out = gpu_decode.decode_jpegs([good, good[: len(good) // 2], b"\xff\xd8junk", good], "cpu")
    assert [o is None for o in out] == [False, True, True, False]
    assert out[0].shape == (3, 60, 80)


def _rows(out: str) -> dict[str, dict]:
    return {r["key"]: r for f in sorted(glob.glob(f"{out}/decisions/*.parquet")) for r in pq.read_table(f).to_pylist()}


def _score(corpus: str, out: str, decode: str, pipeline: str = "score") -> dict:
    return run.run(["--pipeline", pipeline, "--input", corpus, "--output", out, "--set", f"scorer.decode={decode}",
                    "--set", "scorer.device=cpu", "--set", "scorer.batch_size=4"])


def test_gpu_mode_falls_back_per_sample_with_the_cpu_decisions(photos, tmp_path):
    """PNG, WebP, greyscale, CMYK and EXIF-rotated JPEGs take the CPU path; a truncated JPEG is dropped
    as decode cpu drops it; web-sized JPEGs (reduced on CPU, decoded full size on the device) keep their
    stored size. Same decisions and sizes; fallback samples score as decode cpu does."""
    exif = Image.Exif()
    exif[0x0112] = 6
    big = photos[1].resize((1024, 768))
    images = {"rgb": _jpeg(big), "rgb_small": _jpeg(photos[2]), "png": _encoded(photos[3], "PNG"),
              "webp": _encoded(photos[4], "WEBP"), "grey": _jpeg(big.convert("L")), "cmyk": _cmyk_jpeg(big),
              "rotated": _jpeg(big, exif=exif.tobytes()), "truncated": _jpeg(big)[:5000]}
    members = [(f"{i:09d}", {"jpg": data, "txt": f"a photograph, {name}", "json": {"name": name}})
               for i, (name, data) in enumerate(images.items())]
    (tmp_path / "in").mkdir()
    write_tar(str(tmp_path / "in" / "00000.tar"), members)
    rows = {}
    for decode in ("cpu", "gpu"):
        _score(str(tmp_path / "in"), str(tmp_path / decode), decode)
        rows[decode] = _rows(str(tmp_path / decode))
    names = {key: name for key, name in zip(rows["cpu"], images)}
    fields = ("kept", "reason", "stage", "width", "height")
    assert {k: [r.get(f) for f in fields] for k, r in rows["cpu"].items()} == {
        k: [r.get(f) for f in fields] for k, r in rows["gpu"].items()}
    assert rows["gpu"]["000000007"]["reason"] == "truncated_image"
    for key, name in names.items():
        a, b = rows["cpu"][key].get("clip_score"), rows["gpu"][key].get("clip_score")
        if name in ("png", "webp", "grey", "cmyk", "rotated"):
            assert a == b, name   # the CPU path, the same preprocessing
        elif a is not None:
            assert abs(a - b) < 1e-3, name


def test_laion_filter_with_gpu_decode_keeps_what_cpu_decode_keeps(tmp_path):
    corpus = str(tmp_path / "corpus")
    synth.generate(corpus, 48, seed=6, noise=0.3, shard_size=24)
    kept = {}
    for decode in ("cpu", "gpu"):
        report = _score(corpus, str(tmp_path / decode), decode, pipeline="laion_filter")
        assert report["config"]["scorer.decode"] == decode
        kept[decode] = sorted(k for k, r in _rows(str(tmp_path / decode)).items() if r["kept"])
    assert kept["cpu"] and kept["cpu"] == kept["gpu"]
