"""Block lists, opt-out lists and probes wired into the pipelines (pipelines/lists.py, pipelines/probes.py).

Each list kind is applied where it is first possible: URL and domain lists in ingest before any
request (the loopback servers' logs show none), hash lists on the downloaded bytes and at read,
phash and term lists at decode, and every kind but md5/sha1 on a score run's stored metadata. Every
removal is one decision row with its reason and its list file; conservation is checked by each run.
"""
import hashlib
import io
import json
import os
import socket
from contextlib import ExitStack

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from curate.filters.phash import phash
from curate.pipelines.specs import PIPELINES
from ingest_server import FaultServer, image_bytes
from PIL import Image

from curate import config, probe, run, synth
from curate.io import write_tar


def write_list(path, entries):
    path.write_text("# a list\n" + "".join(f"{e}\n" for e in entries), encoding="utf-8")
    return str(path)


def sha256_of(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def lists_arg(key, items):
    return ["--set", f"{key}={json.dumps(items)}"]  # JSON is YAML: --set reads it as a list of mappings


def test_list_options_are_checked_with_one_line():
    schema = PIPELINES["laion_filter"].schema
    with pytest.raises(config.ConfigError, match=r"safety.blocklists\[0\]: unknown key\(s\) radius") as e:
        config.load("laion_filter", schema, overrides=['safety.blocklists=[{path: a.txt, kind: phash, radius: 3}]'])
    assert "\n" not in str(e.value)
    with pytest.raises(config.ConfigError, match=r"probes\[0\]: no path"):
        config.load("laion_filter", schema, overrides=["probes=[{name: x}]"])
    cfg = config.load("laion_filter", schema, overrides=["consent.optout=[{path: a.txt, kind: url}]"])
    assert cfg["consent.optout"] == [{"path": "a.txt", "kind": "url"}] and cfg["safety.blocklists"] == []


# --- ingest: URL and domain lists before any request --------------------------------------------

@pytest.fixture
def hosts():
    with ExitStack() as stack:
        yield [stack.enter_context(FaultServer(host=f"127.0.0.{i}")) for i in (2, 3)]


@pytest.fixture
def names(monkeypatch):
    """NAME.test -> a loopback address; records every name asked."""
    real, asked, table = socket.getaddrinfo, [], {}

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        return real(table.get(host, host), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table, asked


def test_ingest_lists_refuse_before_any_request(hosts, names, tmp_path):
    a, b = hosts
    table, asked = names
    table["img.blocked.test"] = "127.0.0.3"
    blocked = f"http://img.blocked.test:{b.server_address[1]}"
    urls = [f"{a.base}/img/0.jpg", f"{a.base}/img/1.jpg", f"{a.base}/img/2.jpg", f"{a.base}/img/3.jpg",
            f"{blocked}/img/4.jpg", f"{blocked}/img/5.jpg"]
    (tmp_path / "urls.jsonl").write_text("".join(json.dumps({"url": u, "caption": f"scene {i}"}) + "\n"
                                                 for i, u in enumerate(urls)))
    # listed as spelled elsewhere: scheme and host case, a fragment (compared after normalise_url)
    url_list = write_list(tmp_path / "urls.txt", [urls[1].replace("http://", "HTTP://") + "#top"])
    domains = write_list(tmp_path / "domains.txt", ["blocked.test"])  # blocks img.blocked.test
    md5s = write_list(tmp_path / "md5.txt", [hashlib.md5(a.image(2)).hexdigest().upper() + "  2.jpg"])
    optout = write_list(tmp_path / "optout.txt", [urls[3]])
    report = run.run(["--pipeline", "ingest", "--input", str(tmp_path / "urls.jsonl"), "--output", str(tmp_path / "out"),
                      "--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.image_size=64",
                      "--set", "ingest.per_host_rate=0",
                      *lists_arg("safety.blocklists", [{"path": url_list, "kind": "url"},
                                                       {"path": domains, "kind": "domain"},
                                                       {"path": md5s, "kind": "md5"}]),
                      *lists_arg("consent.optout", [{"path": optout, "kind": "url"}])])
    c = report["counts"]
    assert c["input"] == 6 and c["kept"] == 1 and c["dropped_by_reason"] == {
        "blocklisted_url": 1, "blocklisted_domain": 2, "blocklisted_hash": 1, "opted_out_list": 1}
    rows = {r["source_index"]: r for r in pq.read_table(tmp_path / "out" / "decisions").to_pylist()}
    assert [rows[i]["attempts"] for i in range(6)] == [1, 0, 1, 0, 0, 0]  # the hash was checked on the bytes
    assert f"url list {url_list}: " in rows[1]["detail"] and f"domain list {domains}: blocked.test" in rows[4]["detail"]
    assert f"md5 list {md5s}: " in rows[2]["detail"] and f"url list {optout}: " in rows[3]["detail"]
    # no request for a listed URL; the blocked host was neither resolved nor asked for its robots.txt
    assert set(a.hits) == {"/img/0.jpg", "/img/2.jpg"} and b.log == [] and "img.blocked.test" not in asked
    assert [(x["path"], x["sha256"], x["matches"]) for x in report["lists"]] == [
        (url_list, sha256_of(url_list), 1), (domains, sha256_of(domains), 2), (md5s, sha256_of(md5s), 1),
        (optout, sha256_of(optout), 1)]
    raw = pq.read_table(tmp_path / "out" / "raw" / "00000.parquet").to_pylist()
    assert [r["reason"] for r in raw] == [None, "blocklisted_url", "blocklisted_hash", "opted_out_list",
                                          "blocklisted_domain", "blocklisted_domain"]


def test_ingest_refuses_lists_it_cannot_apply(tmp_path):
    (tmp_path / "urls.jsonl").write_text(json.dumps({"url": "http://example.com/a.jpg", "caption": "x"}) + "\n")
    terms = write_list(tmp_path / "terms.txt", ["bad"])
    with pytest.raises(config.ConfigError, match=r"safety.blocklists\[0\]: a term list cannot be applied here"):
        run.run(["--pipeline", "ingest", "--input", str(tmp_path / "urls.jsonl"), "--output", str(tmp_path / "out"),
                 *lists_arg("safety.blocklists", [{"path": terms, "kind": "term"}])])
    assert not (tmp_path / "out").exists()


# --- raw shards: read and decode; stored scores ---------------------------------------------------

CAPTIONS = {  # index -> (language, caption, url)
    0: ("en", "a red circle on the left and a blue square", "http://example.com/0.jpg"),
    1: ("en", "two green stars at the top of the picture", "http://example.com/1.jpg"),       # md5 listed
    2: ("en", "a small yellow hexagon in the center", "http://example.com/2.jpg"),           # sha1 opt-out
    3: ("en", "three black crosses on the right side", "http://example.com/3.jpg"),          # phash listed
    4: ("en", "a purple forbidden thing at the bottom", "http://example.com/4.jpg"),          # term (spaced)
    5: ("zh", "左边有一个违禁品和红色的圆形", "http://example.com/5.jpg"),                       # term (no spaces)
    6: ("en", "the forbiddenthings are orange triangles", "http://example.com/6.jpg"),       # no whole word
    7: ("en", "a large white circle in the middle", "http://Example.com:80/7.jpg#x"),         # url listed
    8: ("en", "an orange triangle at the bottom right", "https://cdn.bad.example/8.jpg"),   # domain listed
    9: ("zh", "右边有两个蓝色的正方形和星形", "http://example.com/9.jpg"),
    10: ("en", "a blue hexagon and a red star on the left", "http://example.com/10.jpg"),     # sha256 listed
    11: ("en", "two large green circles at the top", "http://example.com/11.jpg"),
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A hand-made raw shard, its lists, and a score run that applied them at read and decode."""
    root = tmp_path_factory.mktemp("lists")
    images = {i: image_bytes(i, (256, 256)) for i in CAPTIONS}
    (root / "raw").mkdir()
    write_tar(str(root / "raw" / "00000.tar"), [
        (f"{i:04d}", {"jpg": images[i], "txt": text, "json": {"language": lang, "url": url}})
        for i, (lang, text, url) in CAPTIONS.items()])
    near = int(phash(Image.open(io.BytesIO(images[3])).convert("RGB")), 16) ^ 0b101  # 2 bits off
    lists = {
        "md5": write_list(root / "md5.txt", [hashlib.md5(images[1]).hexdigest()]),
        "sha256": write_list(root / "sha256.txt", [hashlib.sha256(images[10]).hexdigest()]),
        "phash": write_list(root / "phash.txt", [f"{near:016x}"]),
        "en": write_list(root / "en.txt", ["forbidden thing"]),
        "zh": write_list(root / "zh.txt", ["违禁品"]),
        "url": write_list(root / "url.txt", ["http://example.com/7.jpg"]),
        "domain": write_list(root / "domain.txt", ["bad.example"]),
        "sha1": write_list(root / "sha1.txt", [hashlib.sha1(images[2]).hexdigest()]),
    }
    block = [{"path": lists["md5"], "kind": "md5"}, {"path": lists["sha256"], "kind": "sha256"},
             {"path": lists["phash"], "kind": "phash", "max_distance": 4},
             {"path": lists["en"], "kind": "term", "language": "en"},
             {"path": lists["zh"], "kind": "term", "language": "zh"},
             {"path": lists["url"], "kind": "url"}, {"path": lists["domain"], "kind": "domain"}]
    optout = [{"path": lists["sha1"], "kind": "sha1"}]
    report = run.run(["--pipeline", "score", "--input", str(root / "raw"), "--output", str(root / "scored"),
                      *lists_arg("safety.blocklists", block), *lists_arg("consent.optout", optout)])
    return root, lists, report


def test_lists_at_read_and_decode_in_the_score_run(scored):
    root, lists, report = scored
    rows = {r["key"]: r for r in pq.read_table(root / "scored" / "decisions").to_pylist()}
    expected = {"0001": ("read", "blocklisted_hash", "md5"), "0010": ("read", "blocklisted_hash", "sha256"),
                "0002": ("read", "opted_out_list", "sha1"), "0003": ("decode", "blocklisted_phash", "phash"),
                "0004": ("decode", "blocklisted_term", "en"), "0005": ("decode", "blocklisted_term", "zh"),
                "0007": ("read", "blocklisted_url", "url"), "0008": ("read", "blocklisted_domain", "domain")}
    for key, (stage, reason, name) in expected.items():
        assert (rows[key]["stage"], rows[key]["reason"]) == (stage, reason), key
        assert lists[name] in rows[key]["detail"], key
    assert "at distance 2" in rows["0003"]["detail"] and rows["0005"]["detail"].endswith(": 违禁品")
    assert {k for k, r in rows.items() if r["kept"]} == {"0000", "0006", "0009", "0011"}  # 0006: no whole word
    stored = pq.read_table(root / "scored" / "embeddings" / "metadata" / "metadata_0.parquet").column("key").to_pylist()
    assert stored == ["0000", "0006", "0009", "0011"]  # a listed sample is never scored
    assert report["counts"]["input"] == 12 and report["counts"]["kept"] + report["counts"]["dropped"] == 12
    assert {x["path"]: x["matches"] for x in report["lists"]} == dict.fromkeys(lists.values(), 1)
    assert {x["path"]: x["sha256"] for x in report["lists"]} == {p: sha256_of(p) for p in lists.values()}


def test_lists_on_stored_scores(scored, tmp_path):
    """Re-selection on stored scores: the score run's list rows are carried over, and lists given now
    apply to the stored metadata, each row in the stage where its kind is first possible."""
    root, lists, _ = scored
    terms = write_list(tmp_path / "terms.txt", ["正方形"])
    sha = write_list(tmp_path / "optout.sha256", [hashlib.sha256(image_bytes(11, (256, 256))).hexdigest()])
    report = run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "out"), "--set", f"scores={root / 'scored'}",
                      "--set", "select.clip_threshold=-1", "--set", "filters.min_image_size=0",
                      *lists_arg("safety.blocklists", [{"path": terms, "kind": "term"}]),
                      *lists_arg("consent.optout", [{"path": sha, "kind": "sha256"}])])
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "decisions").to_pylist()}
    assert (rows["0009"]["stage"], rows["0009"]["reason"]) == ("decode", "blocklisted_term")
    assert (rows["0011"]["stage"], rows["0011"]["reason"]) == ("read", "opted_out_list")
    assert rows["0004"]["reason"] == "blocklisted_term" and rows["0001"]["reason"] == "blocklisted_hash"
    assert report["counts"]["input"] == 12 and [x["matches"] for x in report["lists"]] == [1, 1]
    with pytest.raises(config.ConfigError, match=r"safety.blocklists\[0\]: a md5 list cannot be applied here"):
        run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "out2"), "--set", f"scores={root / 'scored'}",
                 *lists_arg("safety.blocklists", [{"path": lists["md5"], "kind": "md5"}])])


# --- probes -------------------------------------------------------------------------------------

def aesthetic_state(dim, seed=0):
    """improved-aesthetic-predictor's layers (layers.0 ... layers.7), random weights, ``dim`` inputs."""
    torch.manual_seed(seed)
    sizes = [(dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (i, o) in zip((0, 2, 4, 6, 7), sizes):
        layer = torch.nn.Linear(i, o)
        state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = layer.weight.data, layer.bias.data
    return state


def forbid_clip_models(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a probe loaded a CLIP model")
    for factory in ("create_model", "create_model_and_transforms", "create_model_from_pretrained"):
        monkeypatch.setattr(open_clip, factory, no_model)


@pytest.fixture
def no_clip_model(monkeypatch):
    forbid_clip_models(monkeypatch)


def test_probes_on_stored_embeddings_in_laion_filter(scored, tmp_path, no_clip_model):
    root, _, _ = scored
    store = str(root / "scored" / "embeddings")
    part = probe.read_part(store, 0, ("image", "text"))
    aesthetic_path = str(tmp_path / "aesthetic.pth")
    torch.save(aesthetic_state(part.image.shape[1]), aesthetic_path)  # no sidecar: the layout is recognised
    expected = probe.load_head(aesthetic_path).score(part.image)
    threshold = float(np.median(expected))
    both = probe.Head([probe.Layer(np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32),
                                   np.zeros(1, np.float32))], name="both", kind="linear", target="both",
                      dims={"image": 64, "text": 64})
    both_path = str(tmp_path / "both.pt")
    probe.save_head(both, both_path)  # no threshold: scores only
    report = run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "out"), "--set", f"scores={root / 'scored'}",
                      "--set", "select.clip_threshold=-1", "--set", "filters.min_image_size=0",
                      *lists_arg("probes", [{"path": aesthetic_path, "name": "aesthetic", "threshold": threshold},
                                            {"path": both_path}])])
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "decisions").to_pylist()}
    by_key = dict(zip(part.keys, expected))
    text_scores = dict(zip(part.keys, both.score(part.image, part.text)))
    for key in part.keys:  # every stored sample passed the basic filters and reached the probes
        scores = dict(rows[key]["probe_scores"])
        assert scores["aesthetic"] == pytest.approx(by_key[key], abs=1e-4)
        assert scores["both"] == pytest.approx(text_scores[key], abs=1e-4)
        dropped = round(float(by_key[key]), 4) < threshold
        assert (rows[key]["reason"] == "probe:aesthetic") == dropped and (rows[key]["stage"] == "probe") == dropped
    dropped = sum(r["reason"] == "probe:aesthetic" for r in rows.values())
    assert dropped == 2 and report["counts"]["dropped_by_reason"]["probe:aesthetic"] == 2
    assert [(p["name"], p["kind"], p["scored"], p["dropped"]) for p in report["probes"]] == [
        ("aesthetic", "aesthetic", 4, 2), ("both", "linear", 4, 0)]
    # a head for another width stops the run with one line, before any work
    torch.save(aesthetic_state(768), str(tmp_path / "wide.pth"))
    with pytest.raises(config.ConfigError, match="takes 768-d image embeddings, but the store holds 64-d ones"):
        run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "out3"), "--set", f"scores={root / 'scored'}",
                 *lists_arg("probes", [{"path": str(tmp_path / "wide.pth")}])])


def test_stamped_corpus_is_opt_in_and_labelled(tmp_path):
    plain, stamped = str(tmp_path / "plain"), str(tmp_path / "stamped")
    synth.generate(plain, 40, seed=2, noise=0.0, shard_size=40)
    truth = synth.generate(stamped, 40, seed=2, noise=0.0, shard_size=40, stamped=0.5)
    kinds = {r["key"]: r["kind"] for r in pq.read_table(truth).to_pylist()}
    assert set(kinds.values()) == {"clean", "stamped"} and 10 <= list(kinds.values()).count("stamped") <= 30
    from curate.io import iter_tar_samples

    a = dict(iter_tar_samples(os.path.join(plain, "00000.tar")))
    b = dict(iter_tar_samples(os.path.join(stamped, "00000.tar")))
    for key, kind in kinds.items():  # the same scene; the stamp changes only the stamped images
        assert (a[key]["jpg"] == b[key]["jpg"]) == (kind == "clean") and a[key]["txt"] == b[key]["txt"]


def test_a_probe_learns_the_stamped_watermark(tmp_path, monkeypatch):
    """curate.probe train on the demo scorer's stored embeddings of a stamped corpus (labels: 60% of
    the keys, from the ground truth), then laion_filter on the stored scores with the head: the
    unlabelled 40% are the held-out set. Measured on the 2-core build machine: held-out AUC 1.000
    (25 rows of the labelled keys), AUC 0.980 on the 80 unlabelled samples, 17 of 29 stamped and 1
    of 51 clean unlabelled samples removed."""
    corpus, scored, out = str(tmp_path / "corpus"), str(tmp_path / "scored"), str(tmp_path / "out")
    truth = synth.generate(corpus, 200, seed=31, noise=0.0, shard_size=100, stamped=0.3)
    kinds = {r["key"]: r["kind"] for r in pq.read_table(truth).to_pylist()}
    run.run(["--pipeline", "score", "--input", corpus, "--output", scored])
    forbid_clip_models(monkeypatch)  # from here on: stored embeddings only
    keys = sorted(kinds)
    labelled = set(keys[: len(keys) * 3 // 5])
    (tmp_path / "labels.csv").write_text("key,label\n" + "".join(f"{k},{int(kinds[k] == 'stamped')}\n" for k in sorted(labelled)))
    head = str(tmp_path / "stamped.pt")
    assert probe.main(["train", "--embeddings", scored, "--labels", str(tmp_path / "labels.csv"), "--out", head,
                       "--keep", "below"]) == 0
    sidecar = json.load(open(tmp_path / "stamped.json"))
    run.run(["--pipeline", "laion_filter", "--output", out, "--set", f"scores={scored}",
             *lists_arg("probes", [{"path": head}])])
    rows = [r for r in pq.read_table(os.path.join(out, "decisions")).to_pylist()
            if r["key"] not in labelled and r["probe_scores"] is not None]
    scores = np.array([dict(r["probe_scores"])["stamped"] for r in rows])
    is_stamped = np.array([kinds[r["key"]] == "stamped" for r in rows])
    removed = np.array([r["reason"] == "probe:stamped" for r in rows])
    unlabelled_auc = probe.auc(scores, is_stamped)
    print(f"held-out AUC {sidecar['auc']:.3f} ({sidecar['held_out_rows']} rows), AUC on {len(rows)} unlabelled "
          f"{unlabelled_auc:.3f}; removed {removed[is_stamped].sum()}/{is_stamped.sum()} stamped, "
          f"{removed[~is_stamped].sum()}/{(~is_stamped).sum()} clean")
    assert sidecar["auc"] >= 0.95 and unlabelled_auc >= 0.9
    assert removed[is_stamped].mean() > 0.5 and removed[~is_stamped].mean() <= 0.1


def test_a_missing_list_or_head_file_is_one_line_before_the_pipeline_is_imported(tmp_path, capsys):
    out = tmp_path / "out"
    for key in ("safety.blocklists=[{path: nowhere.md5, kind: md5}]", "probes=[{path: nowhere.pt}]"):
        assert run.main(["--pipeline", "laion_filter", "--output", str(out), "--set", key]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not exist" in err[0] and "nowhere" in err[0]
    assert not out.exists()
