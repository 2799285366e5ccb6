"""Block and opt-out lists (filters/blocklist.py): formats, normalisation, matching, caching, pickling."""
import hashlib
import io
import pickle

import numpy as np
import pytest
from curate.filters import blocklist as bl
from curate.filters.phash import phash
from PIL import Image


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def load(spec, tmp_path):
    return bl.load_list(spec, cache=str(tmp_path / "cache"))


def digests(data: bytes) -> dict:
    return {k: hashlib.new(k, data).hexdigest() for k in ("md5", "sha1", "sha256")}


@pytest.mark.parametrize("kind", ["md5", "sha1", "sha256"])
def test_hash_list_formats_and_match(tmp_path, kind):
    listed, other = b"listed image bytes", b"some other image"
    hexdigest = digests(listed)[kind]
    path = write(tmp_path, f"{kind}.txt", [
        "# a published hash set", "", hexdigest.upper(),  # upper case reads the same
        f"{digests(b'x')[kind]}  images/x.jpg",  # md5sum / sha256sum output: first token only
        f"   {hexdigest}   ",  # a repeat, with spaces: one entry
    ])
    loaded = load(bl.ListSpec(path, kind), tmp_path)
    assert loaded.entries == 2 and loaded.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    lists = bl.Blocklists([loaded.spec], cache=str(tmp_path / "cache"))
    match = lists.check_image(listed)
    assert match == bl.Match("blocklisted_hash", path, kind, hexdigest)
    assert path in match.detail
    assert lists.check_image(other) is None
    assert lists.check_digests({kind: hexdigest.upper()}).reason == "blocklisted_hash"
    assert lists.check_digests({}) is None  # no digest of the list's kind given: not consulted
    assert lists.check_digests({kind: "not hex"}) is None


def test_bad_hash_line_is_one_line_error(tmp_path):
    path = write(tmp_path, "bad.txt", ["# header", hashlib.md5(b"a").hexdigest(), "d41d8cd98f00b204e98009"])
    with pytest.raises(ValueError, match=r"bad\.txt:3: not a md5 digest \(32 hex digits\)"):
        load(bl.ListSpec(path, "md5"), tmp_path)
    path = write(tmp_path, "bad2.txt", ["zz" * 16])
    with pytest.raises(ValueError, match=r"bad2\.txt:1:"):
        load(bl.ListSpec(path, "md5"), tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load(bl.ListSpec(str(tmp_path / "missing.txt"), "md5"), tmp_path)


def test_list_spec_and_config_errors():
    with pytest.raises(ValueError, match="unknown list kind 'sha512'"):
        bl.ListSpec("x.txt", "sha512")
    with pytest.raises(ValueError, match="language applies to term lists only"):
        bl.ListSpec("x.txt", "url", language="en")
    with pytest.raises(ValueError, match="max_distance applies to phash lists only"):
        bl.ListSpec.from_config({"path": "x.txt", "kind": "md5", "max_distance": 3})
    with pytest.raises(ValueError, match="unknown list key"):
        bl.ListSpec.from_config({"path": "x.txt", "kind": "md5", "lang": "en"})
    with pytest.raises(ValueError, match=r"max_distance must be an integer in \[0, 32\]"):
        bl.ListSpec("x.txt", "phash", max_distance=40)


def test_cache_is_memory_mapped_and_follows_the_file(tmp_path):
    data = [hashlib.sha256(bytes([i])).hexdigest() for i in range(50)]
    path = write(tmp_path, "s.txt", data)
    cache = tmp_path / "cache"
    first = bl.load_list(bl.ListSpec(path, "sha256"), cache=str(cache))
    assert bl.load_list(bl.ListSpec(path, "sha256"), cache=str(cache)) is first  # once per process
    cached = list(cache.iterdir())
    assert [p.name for p in cached] == [f"{first.sha256}-sha256-v1.npy"]
    bl._LOADED.clear()  # a new process: the array comes from the cache, memory-mapped
    again = bl.load_list(bl.ListSpec(path, "sha256"), cache=str(cache))
    assert isinstance(again.digests, np.memmap) and again.entries == 50
    assert again.contains(bytes.fromhex(data[7])) and not again.contains(b"\0" * 32)
    write(tmp_path, "s.txt", data[:10])  # the file changed: new sha256, new cache entry
    changed = bl.load_list(bl.ListSpec(path, "sha256"), cache=str(cache))
    assert changed.entries == 10 and changed.sha256 != first.sha256 and len(list(cache.iterdir())) == 2
    no_cache = bl.load_list(bl.ListSpec(path, "sha256"), cache="")
    assert no_cache.entries == 10 and not isinstance(no_cache.digests, np.memmap)


def test_digests_with_trailing_zero_bytes(tmp_path):
    # numpy's fixed-width bytes strip trailing NULs when read back: lookups must still be exact
    ends_in_zero = "ab" * 15 + "00"
    path = write(tmp_path, "z.txt", [ends_in_zero, "ab" * 15 + "01"])
    loaded = load(bl.ListSpec(path, "md5"), tmp_path)
    assert loaded.match_hex(ends_in_zero) and not loaded.match_hex("ab" * 15 + "02")
    assert not loaded.match_hex("ab" * 15)  # a shorter digest is not the padded one


def test_normalise_url():
    n = bl.normalise_url
    same = ["http://Bücher.Example/a b/~x?q=1", "https://xn--bcher-kva.example:443/a%20b/%7Ex?q=1#frag",
            "  HTTP://user:pw@BÜCHER.example:80/a%20b/~x?q=1  "]
    assert {n(u) for u in same} == {"//xn--bcher-kva.example/a%20b/~x?q=1"}
    assert n("http://example.com") == n("http://example.com/") == "//example.com/"
    assert n("http://example.com/A.jpg") != n("http://example.com/a.jpg")  # path case kept
    assert n("http://example.com:8080/x") == "//example.com:8080/x"
    assert n("http://example.com/%c3%a9") == n("http://example.com/é") == "//example.com/%C3%A9"
    assert n("ftp://example.com/x") == "ftp://example.com/x"
    assert n("http://[::1]:80/x") == "//[::1]/x"
    with pytest.raises(ValueError):
        n("example.com/x.jpg")  # no scheme: no host


def test_url_list(tmp_path):
    path = write(tmp_path, "urls.txt", ["# opted out", "https://img.example.com/cat.jpg?size=big",
                                        "http://bücher.example/a b.png"])
    lists = bl.Blocklists([bl.ListSpec(path, "url", bl.CONSENT)], cache=str(tmp_path / "c"))
    for url in ["http://IMG.example.com/cat.jpg?size=big#x", "https://img.example.com:443/cat.jpg?size=big",
                "https://xn--bcher-kva.example/a%20b.png"]:
        m = lists.check_url(url)
        assert m and m.reason == "opted_out_list" and m.path == path and m.kind == "url"
    for url in ["https://img.example.com/cat.jpg", "https://img.example.com/Cat.jpg?size=big",
                "https://example.com/cat.jpg?size=big", None, "", "not a url"]:
        assert lists.check_url(url) is None


def test_domain_list_blocks_subdomains(tmp_path):
    path = write(tmp_path, "domains.txt", ["Example.COM", "*.bücher.example", ".shop.test.", "10.0.0.7"])
    lists = bl.Blocklists([bl.ListSpec(path, "domain")], cache=str(tmp_path / "c"))
    assert lists.describe()[0]["entries"] == 4
    blocked = {"https://example.com/x.jpg": "example.com", "http://a.b.EXAMPLE.com./x": "example.com",
               "https://cdn.xn--bcher-kva.example/y": "xn--bcher-kva.example",
               "https://Bücher.example/": "xn--bcher-kva.example", "http://img.shop.test/z": "shop.test",
               "http://10.0.0.7:8080/i.png": "10.0.0.7"}
    for url, entry in blocked.items():
        m = lists.check_url(url)
        assert m and (m.reason, m.entry) == ("blocklisted_domain", entry), url
    for url in ["https://notexample.com/x", "https://example.com.evil.org/x", "https://test/x",
                "http://110.0.0.7/i.png", "http://0.0.7/i.png"]:
        assert lists.check_url(url) is None, url


def test_bad_domain_line(tmp_path):
    path = write(tmp_path, "d.txt", ["good.example", "two words.example"])
    with pytest.raises(ValueError, match=r"d\.txt:2: not a host name"):
        load(bl.ListSpec(path, "domain"), tmp_path)


def test_phash_radius(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    h = phash(image)
    value = int(h, 16)
    near, far = value ^ 0b1111111, value ^ ((1 << 9) - 1)  # 7 and 9 bits away
    path = write(tmp_path, "p.txt", [f"{near:016x}", f"{far ^ (1 << 40):016x}"])
    lists = bl.Blocklists([bl.ListSpec(path, "phash")], cache=str(tmp_path / "c"))
    m = lists.check_phash(h)
    assert m.reason == "blocklisted_phash" and m.entry == f"{near:016x} at distance 7"
    tight = bl.Blocklists([bl.ListSpec(path, "phash", max_distance=6)], cache=str(tmp_path / "c"))
    assert tight.check_phash(h) is None
    assert lists.check_phash(f"{far:016x}").entry.endswith("at distance 1")  # the nearest entry wins
    assert lists.check_phash(None) is None and lists.check_phash("xyz") is None
    # the vectorised popcount agrees with filters.phash.distance
    hashes = rng.integers(0, 2**63, 20, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    from curate.filters.phash import distance
    got = bl._popcount(hashes ^ np.uint64(value))
    assert list(got) == [distance(f"{int(x):016x}", h) for x in hashes]


def test_terms_whole_words_or_substrings(tmp_path):
    en = write(tmp_path, "en.txt", ["# caption terms", "cat", "Red Panda"])
    ja = write(tmp_path, "ja.txt", ["猫", "LED"])
    every = write(tmp_path, "all.txt", ["forbidden"])
    lists = bl.Blocklists([bl.ListSpec(en, "term", language="en"), bl.ListSpec(ja, "term", language="ja"),
                           bl.ListSpec(every, "term")], cache="")
    check = lists.check_caption
    assert check("A CAT on a mat", "en") == bl.Match("blocklisted_term", en, "term", "cat")
    assert check("a red  panda eating", "en-GB").entry == "Red Panda"  # whitespace and case normalised
    assert check("a category of cats", "en") is None  # whole words where the script has spaces
    assert check("a cat", "de") is None and check("a cat", None) is None  # the list serves English only
    assert check("黒い猫がいる", "ja").entry == "猫"  # substrings where it has none
    assert check("LEDライト", "ja").entry == "LED" and check("LEDs", "ja") is None
    for language in ("en", "ja", "ko", None):
        assert check("a Forbidden picture", language).path == every
    assert check("nothing to see", "en") is None and check(None, "en") is None
    assert [d["entries"] for d in lists.describe()] == [2, 2, 1]
    assert lists.describe()[0]["language"] == "en" and lists.describe()[2]["language"] is None


def test_blocklists_order_pickle_and_describe(tmp_path):
    data = b"an image"
    safety = write(tmp_path, "safety.txt", [hashlib.md5(data).hexdigest()])
    optout = write(tmp_path, "optout.txt", [hashlib.sha256(data).hexdigest()])
    domains = write(tmp_path, "domains.txt", ["example.org"])
    lists = bl.Blocklists.from_config([{"path": safety, "kind": "md5"}],
                                      [{"path": optout, "kind": "sha256"}, {"path": domains, "kind": "domain"}],
                                      cache=str(tmp_path / "c"))
    assert lists.kinds() == {"md5", "sha256", "domain"}
    assert lists.check_image(data).path == safety  # block lists come first
    assert lists.check_digests({"sha256": hashlib.sha256(data).hexdigest()}).reason == "opted_out_list"
    assert lists.check(url="https://cdn.example.org/i.jpg", image=data).reason == "opted_out_list"  # url first
    assert lists.check(url="https://example.net/i.jpg", image=b"other", caption="x", language="en") is None
    clone = pickle.loads(pickle.dumps(lists))
    assert clone._lists is None and len(pickle.dumps(lists)) < 1000  # pickles as specs, loads on first use
    assert clone.check_image(data) == lists.check_image(data)
    described = lists.describe()
    assert [(d["path"], d["kind"], d["purpose"], d["reason"], d["entries"]) for d in described] == [
        (safety, "md5", "safety", "blocklisted_hash", 1), (optout, "sha256", "consent", "opted_out_list", 1),
        (domains, "domain", "consent", "opted_out_list", 1)]
    assert described[0]["sha256"] == hashlib.sha256(open(safety, "rb").read()).hexdigest()
    assert not bl.Blocklists([]) and lists.check_image(None) is None


def test_real_image_bytes(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG")
    path = write(tmp_path, "md5.txt", [hashlib.md5(buf.getvalue()).hexdigest()])
    assert bl.Blocklists([bl.ListSpec(path, "md5")], cache="").check_image(buf.getvalue()).kind == "md5"


def test_a_byte_order_mark_is_no_part_of_the_first_entry(tmp_path):
    """Notepad writes UTF-8 with a BOM: the first term must still match (a silent miss is a safety bug)."""
    path = tmp_path / "terms.txt"
    path.write_bytes("\ufefftriangolo\nquadrato\n".encode("utf-8"))
    lists = bl.Blocklists([bl.ListSpec(str(path), "term")], cache="")
    assert lists.check_caption("un triangolo rosso", "it").entry == "triangolo"
