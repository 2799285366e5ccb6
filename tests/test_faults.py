"""Hostile and broken raw shards: the run completes, each bad sample gets its own reason, nothing
is written outside the output folder, and input == kept + dropped."""
import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import run, synth
from curate.io import is_safe_key


def jpeg(size=(256, 256), **kw):
    rng = np.random.default_rng(0)
    img = synth.render(synth.make_scene(rng), size, rng)
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def cmyk_jpeg():
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg())).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def animated_gif():
    frames = [Image.new("RGB", (240, 240), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


CAPTION = b"two small red circles on the left"


def add(tar, name, data, kind=tarfile.REGTYPE, link=None):
    info = tarfile.TarInfo(name)
    info.type = kind
    if link:
        info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    shards = root / "shards"
    shards.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 128))
    cases = {  # key -> (members, expected reason or None for kept/normalised)
        "good": ({"jpg": jpeg(), "txt": CAPTION}, None),
        "cmyk": ({"jpg": cmyk_jpeg(), "txt": CAPTION}, None),
        "exifrot": ({"jpg": jpeg((320, 240), exif=exif.tobytes()), "txt": CAPTION}, None),
        "alpha": ({"png": png(rgba), "txt": CAPTION}, None),
        "palette": ({"png": png(Image.open(io.BytesIO(jpeg())).convert("P")), "txt": CAPTION}, None),
        "sixteen": ({"png": png(Image.open(io.BytesIO(jpeg())).convert("L").convert("I;16")), "txt": CAPTION}, None),
        "control": ({"jpg": jpeg(), "txt": b"two small\x07 red circles\x1b on the left"}, None),
        "noimage": ({"txt": CAPTION}, "missing_image"),
        "nocaption": ({"jpg": jpeg()}, "missing_caption"),
        "notutf8": ({"jpg": jpeg(), "txt": b"\xff\xfe caption \xc3"}, "caption_not_utf8"),
        "zerobyte": ({"jpg": b"", "txt": CAPTION}, "empty_image"),
        "bomb": ({"png": png(Image.new("L", (12000, 12000))), "txt": CAPTION}, "decompression_bomb"),
        "huge": ({"jpg": jpeg(), "txt": b"word " * 2_000_000}, None),
        "animated": ({"gif": animated_gif(), "txt": CAPTION}, None),
        "dotted.key": ({"jpg": jpeg(), "txt": CAPTION}, None),  # read as key 'dotted'; checked below
        "svg": ({"svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>', "txt": CAPTION}, "unsupported_image_format"),
        "pngasjpg": ({"jpg": png(Image.open(io.BytesIO(jpeg()))), "txt": CAPTION}, None),  # kept, as .png
    }
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for key, (members, _) in cases.items():
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)
        add(tar, "/etc/abs.jpg", jpeg())
        add(tar, "/etc/abs.txt", CAPTION)
        add(tar, "../escape.jpg", jpeg())
        add(tar, "../escape.txt", CAPTION)
        add(tar, "linked.jpg", b"", tarfile.SYMTYPE, link="/etc/passwd")
        add(tar, "linked.txt", CAPTION)
        add(tar, "dup.jpg", jpeg())
        add(tar, "dup.txt", CAPTION)
        add(tar, "between.jpg", jpeg((300, 300)))
        add(tar, "between.txt", CAPTION)
        add(tar, "dup.jpg", jpeg((310, 300)))
        add(tar, "dup.txt", CAPTION)
        add(tar, "twice.jpg", jpeg((300, 310)))
        add(tar, "twice.jpg", jpeg((320, 300)))
        add(tar, "twice.txt", CAPTION)
        add(tar, "between.json", b"{}")  # a stray part of 'between', after other keys
    data = (shards / "00000.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data[: len(data) // 3])  # truncated mid-stream
    (shards / "00002.tar").write_bytes(b"this is not a tar file at all" * 100)
    out = root / "out"
    report = run.run(["--pipeline", "laion_filter", "--input", str(shards), "--output", str(out),
                      "--set", "select.clip_threshold=-1", "--set", "dedup.near=false",
                      "--set", "dedup.exact=false"])
    rows = pq.read_table(str(out / "decisions")).to_pylist()
    return root, out, report, rows, cases


def test_the_run_accounts_for_every_sample(hostile):
    _, _, report, rows, _ = hostile
    c = report["counts"]
    samples = [r for r in rows if r["source_index"] >= 0]
    assert c["input"] == len(samples) == c["kept"] + c["dropped"]
    assert c["unreadable_shards"] == 2  # the truncated and the garbage tar


def test_each_bad_sample_has_its_reason(hostile):
    _, _, _, rows, cases = hostile
    first = {r["key"]: r for r in rows if r["source_shard"].endswith("00000.tar")}
    for key, (_, reason) in cases.items():
        if key != "dotted.key":
            assert first[key]["reason"] == reason, key
    # WebDataset splits names at the first dot: 'dotted.key.jpg' is key 'dotted', member 'key.jpg'
    assert first["dotted"]["reason"] == "missing_caption" and "key.jpg" in first["dotted"]["detail"]
    assert first["/etc/abs"]["reason"] == "unsafe_key" and first["../escape"]["reason"] == "unsafe_key"
    assert first["linked"]["reason"] == "missing_image"  # a link is never followed
    # A key that comes back as a whole sample is a second sample with that key; as a part, it is refused.
    dups = [r for r in rows if r["key"] == "dup" and r["source_shard"].endswith("00000.tar")]
    assert sorted(r["reason"] or "kept" for r in dups) == ["duplicate_key", "kept"]
    between = [r for r in rows if r["key"] == "between" and r["source_shard"].endswith("00000.tar")]
    assert sorted(r["reason"] or "kept" for r in between) == ["kept", "split_sample"]
    assert first["twice"]["reason"] == "duplicate_member" and "twice.jpg" in first["twice"]["detail"]
    assert first["svg"]["image_format"] == "SVG" and first["pngasjpg"]["image_format"] == "PNG"


def test_odd_images_are_normalised_and_kept(hostile):
    _, out, _, rows, _ = hostile
    first = {r["key"]: r for r in rows if r["source_shard"].endswith("00000.tar")}
    assert (first["exifrot"]["width"], first["exifrot"]["height"]) == (240, 320)  # rotated upright
    for key in ("cmyk", "alpha", "palette", "sixteen", "control", "huge", "animated", "pngasjpg"):
        assert first[key]["kept"], key
    import webdataset as wds
    got = {s["__key__"]: s for s in wds.WebDataset(str(out / "shards" / "00000.tar"), shardshuffle=False)}
    assert set(got["pngasjpg"]) >= {"png", "txt", "json"} and "jpg" not in got["pngasjpg"]  # named by its format
    assert "\x07" not in got["control"]["txt"].decode() and "\x1b" not in got["control"]["txt"].decode()


def test_nothing_written_outside_the_output_folder(hostile):
    root, out, _, _, _ = hostile
    assert sorted(p.name for p in root.iterdir()) == ["out", "shards"]
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    for dirpath, _dirs, files in os.walk(out):
        for name in files:
            assert os.path.realpath(os.path.join(dirpath, name)).startswith(str(out.resolve()))
    for tar in (out / "shards").glob("*.tar"):
        assert all(is_safe_key(m) for m in tarfile.open(tar).getnames())


@pytest.mark.parametrize("key,safe", [("000123", True), ("dir/000123", True), ("", False),
                                      ("/abs", False), ("../x", False), ("a/../b", False), ("a\\b", False),
                                      ("./a", True), ("d//e", True), ("./", False), ("././", False)])
def test_safe_keys(key, safe):
    assert is_safe_key(key) is safe


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, image in samples:
            add(tar, f"{key}.jpg", image)
            add(tar, f"{key}.txt", CAPTION)


def _photo(seed, size=(320, 256)):
    rng = np.random.default_rng(seed)
    img = synth.render(synth.make_scene(rng), size, rng)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), img


def test_a_truncated_shard_read_first_still_gives_its_samples(tmp_path):
    """The writer re-reads raw shards for the image bytes; it must stop at the last wanted sample of a
    damaged shard and not read into the damage (which failed the whole run)."""
    (tmp_path / "in").mkdir()
    _shard(tmp_path / "in" / "00000.tar", [(f"a{i}", _photo(i)[0]) for i in range(4)])
    data = (tmp_path / "in" / "00000.tar").read_bytes()
    (tmp_path / "in" / "00000.tar").write_bytes(data[: int(len(data) * 0.8)])
    _shard(tmp_path / "in" / "00001.tar", [(f"b{i}", _photo(10 + i)[0]) for i in range(3)])
    report = run.run(["--pipeline", "laion_filter", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                      "--set", "select.clip_threshold=-1", "--set", "shards.samples_per_shard=100"])
    rows = pq.read_table(tmp_path / "out" / "decisions").to_pylist()
    read_a = {r["key"] for r in rows if r["key"].startswith("a")}
    assert read_a and report["counts"]["unreadable_shards"] == 1
    written = set(tarfile.open(tmp_path / "out" / "shards" / "00000.tar").getnames())
    assert {f"{k}.jpg" for k in read_a if next(r for r in rows if r["key"] == k)["kept"]} <= written


def test_a_key_clash_never_costs_the_copy_of_the_losing_image(tmp_path):
    """Two merged downloads repeat a key: 'k' in shard 0 is one scene, 'k' in shard 1 another, and
    'copy' a re-encoded copy of shard 1's 'k'. The clash is resolved first (shard 0 keeps the key),
    so 'copy' is not dropped in favour of an image that is never written: it is kept."""
    (tmp_path / "in").mkdir()
    first, _ = _photo(1)
    second, img = _photo(2)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    _shard(tmp_path / "in" / "00000.tar", [("k", first)])
    _shard(tmp_path / "in" / "00001.tar", [("k", second), ("copy", buf.getvalue())])
    run.run(["--pipeline", "laion_filter", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
             "--set", "select.clip_threshold=-1"])
    rows = {(r["source_shard"][-9:], r["key"]): r for r in pq.read_table(tmp_path / "out" / "decisions").to_pylist()}
    assert rows[("00000.tar", "k")]["kept"]
    assert rows[("00001.tar", "k")]["reason"] == "duplicate_key" and rows[("00001.tar", "k")]["stage"] == "unique_keys"
    assert rows[("00001.tar", "copy")]["kept"], rows[("00001.tar", "copy")]


def test_spellings_of_one_path_are_webdatasets_samples_under_one_key_and_every_key_exports(tmp_path):
    """A trial found './c' and 'c' both kept (the LLaVA export then gave one the other's image),
    'd//e' merged into 'd/e' (a sample fewer than webdataset reads), and keys 'a' and 'a.jpg/b' crash
    the LLaVA export (a.jpg wanted as a file and as a folder)."""
    import webdataset as wds

    names = ["b", "./c", "c", "d//e", "d/e", "a", "a.jpg/b"]
    (tmp_path / "in").mkdir()
    photos = {name: _photo(20 + i)[0] for i, name in enumerate(names)}
    _shard(tmp_path / "in" / "00000.tar", list(photos.items()))
    read = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "in" / "00000.tar"), shardshuffle=False)]
    assert read == names  # webdataset's own samples
    out = tmp_path / "out"
    run.run(["--pipeline", "laion_filter", "--input", str(tmp_path / "in"), "--output", str(out),
             "--set", "select.clip_threshold=-1", "--set", "dedup.near=false"])
    rows = sorted(pq.read_table(out / "decisions").to_pylist(), key=lambda r: r["source_index"])
    assert [r["source_index"] for r in rows] == list(range(len(names)))  # one row per webdataset sample
    assert [(r["key"], r["kept"] or r["reason"]) for r in rows] == [
        ("b", True), ("c", True), ("c", "duplicate_key"), ("d/e", True), ("d/e", "duplicate_key"),
        ("a", True), ("a.jpg/b", True)]
    members = tarfile.open(out / "shards" / "00000.tar").getnames()
    assert not any(m.startswith("./") or "//" in m for m in members)
    assert run.run(["--pipeline", "export", "--input", str(out / "shards"), "--output", str(tmp_path / "exp"),
                    "--set", "formats=[llava]"])
    llava = tmp_path / "exp" / "llava"
    records = {r["id"]: r["image"] for r in json.load(open(llava / "chat.json"))}
    assert sorted(records) == ["a", "a.jpg/b", "b", "c", "d/e"]
    kept_from = {"b": "b", "c": "./c", "d/e": "d//e", "a": "a", "a.jpg/b": "a.jpg/b"}  # the first spelling wins
    for key, image in records.items():  # each entry opens its own sample's image
        assert (llava / "images" / image).read_bytes() == photos[kept_from[key]], key
    assert len(set(records.values())) == len(records)


def test_a_caption_file_reads_without_its_byte_order_mark_and_control_characters():
    """A trial found a Windows editor's byte-order mark kept as the caption's first character."""
    from curate.filters.sample import read_caption

    assert read_caption("\ufeff红色的汽车停在路边\r\n".encode()) == "红色的汽车停在路边 \n"
    assert read_caption("a\ufeffb".encode()) == "a\ufeffb"  # inside a caption it is not a mark of the file
    with pytest.raises(UnicodeDecodeError):
        read_caption(b"\xff\xfe caption")
