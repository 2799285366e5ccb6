"""Generative (Chameleon-style) export: VQ tokenizers through transformers, packing, the written
files (WebDataset token shards and a Megatron .bin/.idx read by megatron-core), and a tiny
ChameleonForConditionalGeneration trained a step on batches read from those files.

Everything is built offline: a random-weight tiny VQ-VAE saved with save_pretrained, a byte-level
BPE tokenizer trained on the synthetic captions, shards from curate.synth.
"""
from __future__ import annotations

import filecmp
import glob
import os

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from curate.filters.image import decode_image

from curate import run, synth
from curate.config import ConfigError
from curate.exports import packing
from curate.exports.chameleon import SCHEMA, ChameleonExport, read_layout
from curate.exports.common import read_curated_shard
from curate.models import vq

SEQ_LEN = 160   # about two documents (1 + caption + 66 image + 1 tokens) per sequence, so packing is exercised


def _tokenizer(folder: str, captions: list[str]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(captions, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>") \
        .save_pretrained(folder)
    return folder


def _export(shards: list[str], cfg: dict, out_dir: str) -> None:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | beam.Create(shards) | ChameleonExport(cfg, out_dir)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chameleon")
    synth.generate(str(root / "shards"), 24, seed=4, noise=0.0, shard_size=12)
    shards = sorted(glob.glob(str(root / "shards" / "*.tar")))
    captions = [s.caption for path in shards for s in read_curated_shard(path)]
    cfg = {"chameleon.vq_model": vq.save_random(str(root / "vq"), vq.tiny_config("chameleon")),
           "chameleon.tokenizer": _tokenizer(str(root / "tok"), captions),
           "chameleon.seq_len": SEQ_LEN, "chameleon.image_first_ratio": 0.5, "chameleon.seed": 0,
           "chameleon.batch_size": 5, "chameleon.device": "cpu", "chameleon.precision": "fp32",
           "chameleon.resolution": None}
    assert set(cfg) == set(SCHEMA)
    # Through the export pipeline's CLI, as a user runs it.
    report = run.run(["--pipeline", "export", "--input", str(root / "shards"), "--output", str(root / "export"),
                      "--set", "formats=[chameleon]"]
                     + [a for k, v in cfg.items() for a in ("--set", f"{k}={'null' if v is None else v}")])
    assert report["counts"]["kept"] == len(captions)
    return {"root": root, "shards": shards, "cfg": cfg, "out": str(root / "export" / "chameleon")}


def _wds_sequences(out: str) -> list[dict]:
    import webdataset as wds
    urls = sorted(glob.glob(os.path.join(out, "*.tar")))
    return list(wds.WebDataset(urls, shardshuffle=False).decode())


def _megatron(out: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(os.path.join(out, "chameleon"))


def test_sequences_round_trip_to_captions_and_codes(setup):
    """Each document decodes back to its caption and to the VQ codes of its image."""
    from transformers import AutoTokenizer
    text = AutoTokenizer.from_pretrained(setup["cfg"]["chameleon.tokenizer"])
    tok = vq.VQTokenizer.from_pretrained(setup["cfg"]["chameleon.vq_model"], device="cpu")
    layout = read_layout(setup["out"])
    samples = {s.key: s for path in setup["shards"] for s in read_curated_shard(path)}
    seen, orders = [], set()
    for seq in _wds_sequences(setup["out"]):
        tokens, cu = seq["tokens.npy"].astype(np.int64), seq["cu_seqlens.npy"]
        assert tokens.shape == (SEQ_LEN,)
        docs = seq["json"]["documents"]
        assert list(cu[:-1]) == [d["start"] for d in docs] and cu[-1] == SEQ_LEN - seq["json"]["padding"]
        assert (tokens[cu[-1]:] == layout["pad"]).all()
        for d in docs:
            ids = tokens[d["start"]:d["start"] + d["length"]]
            sample = samples[d["key"]]
            assert ids[0] == layout["bos"] and ids[-1] == layout["eod"]
            boi, eoi = int(np.flatnonzero(ids == layout["boi"])[0]), int(np.flatnonzero(ids == layout["eoi"])[0])
            codes = ids[boi + 1:eoi] - layout["image_offset"]
            expected = tok.encode_images([decode_image(sample.image).image])[0].ravel()
            assert np.array_equal(codes, expected) and d["grid"] == [8, 8]
            image_first = d["order"] == "image_first"
            assert image_first == packing.image_first(d["key"], 0.5, 0) == (boi == 1)
            caption_ids = ids[eoi + 1:-1] if image_first else ids[1:boi]
            assert text.decode(caption_ids.tolist()) == sample.caption
            seen.append(d["key"])
            orders.add(d["order"])
    # every sample exactly once, in shard order, and both orders present
    assert seen == list(samples) and orders == {"image_first", "caption_first"}


def test_pack_conserves_every_token_and_cuts_long_documents():
    rng = np.random.default_rng(1)
    docs = [(f"k{i}", rng.integers(0, 50, size=int(n)), False) for i, n in enumerate(rng.integers(1, 40, size=60))]
    docs.append(("long", np.arange(95), True))   # longer than a sequence: cut into pieces
    seqs = list(packing.pack(docs, 32, pad=-1))
    assert all(len(s.tokens) == 32 for s in seqs)
    rebuilt: dict[str, list] = {}
    for s in seqs:
        for seg in s.segments:
            assert seg.offset == len(rebuilt.setdefault(seg.key, []))
            rebuilt[seg.key].extend(s.tokens[seg.start:seg.start + seg.length])
        assert (s.tokens[s.used:] == -1).all()
    assert list(rebuilt) == [k for k, _, _ in docs]
    assert all(np.array_equal(rebuilt[k], ids) for k, ids, _ in docs)
    assert sum(s.used for s in seqs) == sum(len(ids) for _, ids, _ in docs)


def test_megatron_dataset_matches_webdataset(setup):
    """megatron-core's IndexedDataset reads the .bin/.idx: document j = packed sequence j, its items
    the documents inside (their lengths = the boundaries) and a padding item."""
    ds, seqs = _megatron(setup["out"]), _wds_sequences(setup["out"])
    di = ds.document_indices
    assert len(di) - 1 == len(seqs) and ds.index.dtype == np.uint16
    for j, seq in enumerate(seqs):
        items = ds[int(di[j]):int(di[j + 1])]
        assert np.array_equal(np.concatenate(items), seq["tokens.npy"])
        lengths = [len(x) for x in items][: len(seq["json"]["documents"])]
        assert lengths == list(np.diff(seq["cu_seqlens.npy"]))


def test_export_is_byte_identical_whatever_the_shard_order(setup, tmp_path):
    """The transform alone, shards listed in reverse, gives the bytes the CLI run wrote."""
    out2 = str(tmp_path / "again")
    _export(list(reversed(setup["shards"])), setup["cfg"], out2)
    names = sorted(os.listdir(setup["out"]))
    assert names == sorted(os.listdir(out2)) and "chameleon.bin" in names and ".parts" not in names
    _, mismatch, errors = filecmp.cmpfiles(setup["out"], out2, names, shallow=False)
    assert not mismatch and not errors


def _tiny_chameleon(layout: dict, vq_config):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration
    config = ChameleonConfig(vocab_size=layout["vocab_size"], hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=SEQ_LEN, vocabulary_map=layout["vocabulary_map"],
                             vq_config=vq_config.to_dict(), bos_token_id=layout["bos"],
                             eos_token_id=layout["eod"], pad_token_id=layout["pad"])
    torch.manual_seed(0)
    return ChameleonForConditionalGeneration(config)


def test_chameleon_trains_on_exported_files(setup, tmp_path):
    """A tiny ChameleonForConditionalGeneration: forward + backward on batches read from both files.

    Its forward sets image-token logits to the dtype minimum (Chameleon's inference-time rule that
    text generation never emits image codes), so a loss over image tokens through ``labels`` is
    infinite. Two honest losses: (1) the model's own, with image-code positions masked out of the
    labels (captioning + markers); (2) next-token cross-entropy over every token, images included,
    computed from the hidden states with the LM head, as an image-generation trainer does.
    """
    layout = read_layout(setup["out"])
    model = _tiny_chameleon(layout, vq.VQTokenizer.from_pretrained(setup["cfg"]["chameleon.vq_model"]).model.config)
    image_ids = torch.tensor(sorted(v for k, v in layout["vocabulary_map"].items() if k.startswith("IMGIMG")))
    ds = _megatron(setup["out"])
    di = ds.document_indices
    batches = {"webdataset": np.stack([s["tokens.npy"] for s in _wds_sequences(setup["out"])[:2]]),
               "megatron": np.stack([np.concatenate(ds[int(di[j]):int(di[j + 1])]) for j in range(2)])}
    assert np.array_equal(batches["webdataset"], batches["megatron"])
    for source, batch in batches.items():
        ids = torch.from_numpy(batch.astype(np.int64))
        assert bool(torch.isin(ids, image_ids).any())
        labels = ids.masked_fill(ids == layout["pad"], -100)
        model.zero_grad()
        own = model(input_ids=ids, labels=labels.masked_fill(torch.isin(ids, image_ids), -100)).loss
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model.lm_head(hidden)[:, :-1]
        full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        (own + full).backward()
        assert torch.isfinite(own) and torch.isfinite(full), source
        grad = model.lm_head.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad[image_ids].abs().sum() > 0, source

    # A whole Chameleon checkpoint works as chameleon.vq_model: only its model.vqmodel weights are read.
    whole = str(tmp_path / "whole")
    model.save_pretrained(whole)
    image = decode_image(read_curated_shard(setup["shards"][0]).__next__().image).image
    from_whole = vq.VQTokenizer.from_pretrained(whole, device="cpu").encode_images([image])[0]
    with torch.inference_mode():
        pixels, _ = vq.VQTokenizer.from_pretrained(whole, device="cpu").preprocess(image)
        direct = model.model.vqmodel.encode(pixels[None]).image_tokens.view(from_whole.shape)
    assert np.array_equal(from_whole, direct.numpy())


def test_emu3_vq_tokenizer_loads_and_encodes(tmp_path):
    folder = vq.save_random(str(tmp_path / "emu3"), vq.tiny_config("emu3"))
    tok = vq.VQTokenizer.from_pretrained(folder, device="cpu")
    assert tok.family == "emu3" and vq.read_codebook_size(folder) == 256
    rng = np.random.default_rng(0)
    from PIL import Image
    images = [Image.fromarray(rng.integers(0, 255, (h, 70, 3), dtype=np.uint8)) for h in (60, 90, 60)]
    batched, alone = tok.encode_images(images, batch_size=3), [tok.encode_images([im])[0] for im in images]
    assert all(np.array_equal(a, b) for a, b in zip(batched, alone, strict=True))
    assert all(g.dtype == np.int32 and g.min() >= 0 and g.max() < 256 for g in batched)


def test_bad_settings_are_one_line_errors(setup, tmp_path):
    cfg = dict(setup["cfg"])
    with pytest.raises(ConfigError, match="chameleon.vq_model must name a local folder"):
        ChameleonExport.check({**cfg, "chameleon.vq_model": None})
    with pytest.raises(ConfigError, match="has no config.json"):
        ChameleonExport.check({**cfg, "chameleon.vq_model": str(tmp_path)})
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="'llama' is not a VQ tokenizer"):
        ChameleonExport.check({**cfg, "chameleon.vq_model": str(tmp_path / "llama")})
    with pytest.raises(ConfigError, match="chameleon.tokenizer"):
        ChameleonExport.check({**cfg, "chameleon.tokenizer": str(tmp_path / "missing")})


def test_emu3_export_skips_an_image_its_processor_rejects(setup, tmp_path):
    """Emu3's processor refuses aspect ratios above 200: that sample is skipped and recorded in
    layout.json, the others are exported (with Emu3's per-image code grids), the run goes on."""
    import io as _io

    from PIL import Image

    from curate.io import write_tar
    def jpeg(w, h):
        buf = _io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="JPEG")
        return buf.getvalue()
    shard = str(tmp_path / "00000.tar")
    write_tar(shard, [("a", {"jpg": jpeg(80, 64), "txt": "a red square"}),
                      ("thin", {"jpg": jpeg(402, 2), "txt": "a thin red line"}),
                      ("b", {"jpg": jpeg(64, 96), "txt": "a tall red box"})])
    cfg = {**setup["cfg"], "chameleon.vq_model": vq.save_random(str(tmp_path / "emu3"), vq.tiny_config("emu3"))}
    out = str(tmp_path / "out")
    _export([shard], cfg, out)
    layout = read_layout(out)
    assert [(r["key"], r["reason"]) for r in layout["skipped"]] == [("thin", "vq_encode_failed")]
    assert layout["documents"] == 2 and layout["codebook"] == 256
    docs = [d for s in _wds_sequences(out) for d in s["json"]["documents"]]
    assert [d["key"] for d in docs] == ["a", "b"] and docs[0]["grid"] != docs[1]["grid"]


def test_export_to_a_remote_folder_writes_the_same_bytes(setup):
    """Output on fsspec's in-memory filesystem: megatron-core's builder writes local files, so the
    parts are staged locally and uploaded; the result is the local export's bytes."""
    import fsspec

    memory = fsspec.filesystem("memory")
    try:
        _export(setup["shards"], setup["cfg"], "memory://cham/out")
        names = sorted(os.listdir(setup["out"]))
        assert sorted(p.rsplit("/", 1)[1] for p in memory.find("/cham/out")) == names
        for name in names:
            assert memory.cat(f"/cham/out/{name}") == open(os.path.join(setup["out"], name), "rb").read(), name
    finally:
        if memory.exists("/cham"):
            memory.rm("/cham", recursive=True)


def test_a_resumed_export_tokenizes_only_the_shards_it_had_not_finished(setup, tmp_path, monkeypatch):
    """Issue 15 item 5: a VQ encoder that fails on the second curated shard leaves the first one's tar,
    Megatron part and marker; rerun into the same folder, the export encodes only the other shard
    (VQ calls counted) and writes the bytes of an uninterrupted export, leaving no .parts behind."""
    encode, calls, crash = vq.VQTokenizer.encode_images, [], True

    class Crash(Exception):
        """Not an encoder error, which the export records as a skipped sample and goes on."""

    def counted(self, images, batch_size=32):
        calls.append(len(images))
        if crash and len(calls) > 3:   # 12 samples per shard, batch_size 5: 3 calls a shard
            raise Crash("simulated crash")
        return encode(self, images, batch_size)

    monkeypatch.setattr(vq.VQTokenizer, "encode_images", counted)
    out = str(tmp_path / "out")
    with pytest.raises(Exception, match="simulated crash"):
        _export(setup["shards"], setup["cfg"], out)
    finished = [n[:-len(".json")] for n in sorted(os.listdir(os.path.join(out, ".parts"))) if n.endswith(".json")]
    assert len(finished) == 1 and os.path.exists(os.path.join(out, f"{finished[0]}.tar"))
    calls.clear()
    crash = False
    _export(setup["shards"], setup["cfg"], out)
    assert calls == [5, 5, 2]   # the other shard only
    names = sorted(os.listdir(setup["out"]))
    assert sorted(os.listdir(out)) == names and ".parts" not in names
    _, mismatch, errors = filecmp.cmpfiles(setup["out"], out, names, shallow=False)
    assert not mismatch and not errors


def test_precision_auto_is_fp32(setup):
    """Issue 14 item 9: `chameleon.precision: auto` is fp32 whatever the device (the README says so)."""
    tok = vq.VQTokenizer.from_pretrained(setup["cfg"]["chameleon.vq_model"], device="cpu", precision="auto")
    assert tok.dtype == torch.float32 and {p.dtype for p in tok.model.parameters()} == {torch.float32}
