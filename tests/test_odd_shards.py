"""Odd-but-valid raw shards (issue 13, items 5-7): read as webdataset reads them or refused with a
reason, never silently merged or counted twice; images decoded by content whatever their member's
name, recorded by format, and written under their real format's extension."""
import hashlib
import io
import json
import os
import struct
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from curate.filters import image as img_filter
from PIL import Image, features

from curate import run, synth
from curate.io import iter_tar_groups, iter_tar_samples
from curate.raw_shards import read_shard

CAPTION = b"two small red circles on the left"
HAS_AVIF = bool(features.check("avif"))
HAS_HEIF = img_filter.pillow_heif is not None


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add(tar, name, data)
    return str(path)


def scene(seed, size=(256, 256)):
    rng = np.random.default_rng(seed)
    return synth.render(synth.make_scene(rng), size, rng)


def encoded(seed, fmt="JPEG", **kw):
    buf = io.BytesIO()
    image = scene(seed)
    (image.convert("P") if fmt == "GIF" else image).save(buf, fmt, **kw)
    return buf.getvalue()


def heic_bytes():
    ftyp = b"ftypheic\x00\x00\x00\x00mif1heic"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\x00\x00\x00\x08meta" + bytes(200)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"><rect/></svg>'


# --- the reader, without Beam ------------------------------------------------------------------------


def test_a_repeated_member_name_is_marked_not_silently_replaced(tmp_path):
    """Issue 13, item 5: `k.jpg`, `k.jpg`, `k.txt`. The second copy used to win silently."""
    first, second = encoded(1), encoded(2)
    path = write_tar(tmp_path / "x.tar", [("k.jpg", first), ("k.JPG", second), ("k.txt", CAPTION)])
    (group,) = list(iter_tar_groups(path))
    assert group.key == "k" and group.repeated == ("k.JPG",) and group.fields["jpg"] == first
    item, (_, count) = list(read_shard(0, path, 1))  # the sample's row, then the reader's count
    assert count.samples == 1
    tag, row = item
    assert tag == "decisions" and row["reason"] == "duplicate_member" and row["stage"] == "read"
    assert "k.JPG" in row["detail"] and row["source_index"] == 0


def test_webdataset_refuses_a_repeated_member_name(tmp_path):
    """What webdataset 0.2.86 does with the same tar: its group_by_keys raises (duplicate file name)."""
    path = write_tar(tmp_path / "x.tar", [("k.jpg", encoded(1)), ("k.jpg", encoded(2)), ("k.txt", CAPTION)])
    with pytest.raises(ValueError, match="duplicate file name"):
        list(wds.WebDataset(path, shardshuffle=False))


def test_non_adjacent_members_are_grouped_as_webdataset_groups_them(tmp_path):
    """Issue 13, item 6: `a.jpg b.jpg a.txt b.txt` is four samples to webdataset, and to curate; the
    later two are marked as parts of keys already read, so they are never counted silently."""
    path = write_tar(tmp_path / "x.tar", [("a.jpg", encoded(1)), ("b.jpg", encoded(2)),
                                          ("a.txt", CAPTION), ("b.txt", CAPTION)])
    groups = list(iter_tar_groups(path))
    assert [g.key for g in groups] == [s["__key__"] for s in wds.WebDataset(path, shardshuffle=False)]
    assert [(g.key, g.earlier_index, g.earlier_members) for g in groups] == [
        ("a", None, ()), ("b", None, ()), ("a", 0, ("jpg",)), ("b", 1, ("jpg",))]
    rows = [row for tag, row in read_shard(0, path, 1) if tag == "decisions" and isinstance(row, dict)]
    assert [(r["key"], r["source_index"], r["reason"]) for r in rows] == [("a", 2, "split_sample"),
                                                                         ("b", 3, "split_sample")]
    assert "source_index 0" in rows[0]["detail"] and "members jpg" in rows[0]["detail"]
    assert [k for k, _ in iter_tar_samples(path)] == ["a", "b", "a", "b"]  # the indices the writer re-reads by


# --- the whole run -----------------------------------------------------------------------------------

FORMAT_CASES = {  # key -> (member name, bytes, expected image_format, expected curated member or reason)
    "jj": ("jj.jpg", encoded(10), "JPEG", "jj.jpg"),
    "pj": ("pj.jpg", encoded(11, "PNG"), "PNG", "pj.png"),
    "wj": ("wj.jpg", encoded(12, "WEBP", quality=90), "WEBP", "wj.webp"),
    # formats trainers do not read (open_clip takes jpg/png/webp): re-encoded losslessly as PNG
    "gj": ("gj.jpg", encoded(13, "GIF"), "GIF", "gj.png"),
    "tj": ("tj.jpg", encoded(14, "TIFF"), "TIFF", "tj.png"),
    "bj": ("bj.jpg", encoded(15, "BMP"), "BMP", "bj.png"),
    "sv": ("sv.svg", SVG, "SVG", "unsupported_image_format"),
    "sj": ("sj.jpg", SVG, "SVG", "unsupported_image_format"),
}
if HAS_AVIF:
    FORMAT_CASES["av"] = ("av.avif", encoded(16, "AVIF", quality=90), "AVIF", "av.png")
    FORMAT_CASES["aj"] = ("aj.jpg", encoded(17, "AVIF", quality=90), "AVIF", "aj.png")
if not HAS_HEIF:
    FORMAT_CASES["hc"] = ("hc.heic", heic_bytes(), "HEIF", "unsupported_image_format")


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    shards = root / "in"
    shards.mkdir()
    after = encoded(7)
    write_tar(shards / "00000.tar", [
        ("dup.jpg", encoded(1)), ("dup.jpg", encoded(2)), ("dup.txt", CAPTION),          # 0: duplicate_member
        ("a.jpg", encoded(3)), ("b.jpg", encoded(4)), ("a.txt", CAPTION), ("b.txt", CAPTION),  # 1-4
        ("c.jpg", encoded(5)), ("c.txt", CAPTION), ("d.jpg", encoded(6)), ("d.txt", CAPTION),  # 5, 6
        ("c.json", b'{"url": "http://example.invalid/c.jpg"}'),                            # 7: a stray late part of c
        ("after.jpg", after), ("after.txt", CAPTION),                                     # 8
    ])
    members = []
    for name, data, _, _ in FORMAT_CASES.values():
        members += [(name, data), (f"{name.split('.')[0]}.txt", CAPTION)]
    write_tar(shards / "00001.tar", members)
    out = root / "out"
    report = run.run(["--pipeline", "laion_filter", "--input", str(shards), "--output", str(out),
                      "--set", "select.clip_threshold=-1", "--set", "dedup.near=false", "--set", "dedup.exact=false"])
    rows = {(r["source_shard"][-9:], r["source_index"]): r for r in pq.read_table(str(out / "decisions")).to_pylist()}
    curated = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            curated.update({m.name: t.extractfile(m).read() for m in t.getmembers()})
    return root, out, report, rows, curated, after


def test_every_input_sample_is_accounted_for_and_none_silently(odd):
    _, _, report, rows, _, _ = odd
    c = report["counts"]
    assert c["input"] == len(rows) == c["kept"] + c["dropped"]
    assert c["dropped_by_reason"]["split_sample"] == 3 and c["dropped_by_reason"]["duplicate_member"] == 1


def test_odd_shapes_get_their_reasons(odd):
    _, _, _, rows, curated, after = odd
    shard = {i: rows[("00000.tar", i)] for i in range(9)}
    assert [(shard[i]["key"], shard[i]["reason"] or "kept") for i in range(9)] == [
        ("dup", "duplicate_member"), ("a", "missing_caption"), ("b", "missing_caption"), ("a", "split_sample"),
        ("b", "split_sample"), ("c", "kept"), ("d", "kept"), ("c", "split_sample"), ("after", "kept")]
    assert "dup.jpg" in shard[0]["detail"]
    assert "source_index 5" in shard[7]["detail"] and "members json" in shard[7]["detail"]
    # The writer re-reads the raw shard by sample index: the groups after the odd ones get their own bytes.
    assert curated["after.jpg"] == after
    assert json.loads(curated["c.json"])["sha256"] == hashlib.sha256(curated["c.jpg"]).hexdigest()


def test_formats_are_decoded_by_content_recorded_and_named(odd):
    _, out, _, rows, curated, _ = odd
    by_key = {r["key"]: r for (shard, _), r in rows.items() if shard == "00001.tar"}
    table = {r["key"]: r for p in sorted((out / "shards").glob("*.parquet"))
             for r in pq.read_table(p, columns=["key", "image_format"]).to_pylist()}
    for key, (name, data, fmt, expected) in FORMAT_CASES.items():
        row = by_key[key]
        assert row["image_format"] == fmt, key
        if expected == "unsupported_image_format":
            assert row["reason"] == expected and row["detail"].startswith(f"{fmt}: "), key
            assert not any(m.startswith(f"{key}.") for m in curated), key
            continue
        assert row["kept"], (key, row)
        assert json.loads(curated[f"{key}.json"])["image_format"] == fmt  # the input's format
        assert table[key]["image_format"] == fmt
        if fmt in ("JPEG", "PNG", "WEBP"):  # the original bytes, under their real format's extension
            assert curated[expected] == data, key
        else:  # the image as it was scored, lossless
            stored = Image.open(io.BytesIO(curated[expected]))
            assert stored.format == "PNG"
            assert np.array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))), key


def test_exports_take_the_renamed_members(odd, tmp_path):
    """Curated members are jpg/png/webp (the others became PNG when curated): the contrastive export
    keeps the curated bytes; BLIP-2 always gets a JPEG named jpg; LLaVA files keep the name."""
    _, out, _, _, curated, _ = odd
    exp = tmp_path / "exp"
    run.run(["--pipeline", "export", "--input", str(out / "shards"), "--output", str(exp),
             "--set", "formats=[contrastive, blip2, llava]"])
    kept = {k: v for k, v in FORMAT_CASES.items() if v[3] != "unsupported_image_format"}
    contrastive = {s["__key__"]: s for t in sorted((exp / "contrastive").glob("*.tar"))
                   for s in wds.WebDataset(str(t), shardshuffle=False)}
    for key, (_, data, fmt, member) in kept.items():
        ext = member.split(".", 1)[1]
        assert contrastive[key][ext] == curated[member], key
    blip2 = {s["__key__"]: s for t in sorted((exp / "blip2").glob("*.tar"))
             for s in wds.WebDataset(str(t), shardshuffle=False)}
    assert set(kept) <= set(blip2)
    assert all(Image.open(io.BytesIO(blip2[k]["jpg"])).format == "JPEG" for k in kept)
    images = {os.path.basename(p) for _, _, files in os.walk(exp / "llava" / "images") for p in files}
    assert {member for _, _, _, member in kept.values()} <= images
    assert curated  # read above
