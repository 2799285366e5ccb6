"""Family exports (contrastive, FLAVA, LLaVA, BLIP-2) read by their reference models.

laion_filter runs once on a small synthetic corpus with ``exports`` set (a random-weight tiny
FlavaImageCodebook saved locally gives the codebook ids); the standalone export pipeline then
exports the same shards. Each family's files are read with the reader its trainer uses
(webdataset for shards, json + PIL for LLaVA) and a tiny random transformers model of that family
runs a forward and backward pass on a batch of them.
"""
from __future__ import annotations

import filecmp
import glob
import json
import os
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from curate.pipelines import export

from curate import run, synth
from curate.exports.flava import IMAGE_ONLY_REASONS, TEXT_ONLY_REASONS, block_mask

FORMATS = ["contrastive", "flava", "llava", "blip2"]
GRID, CODEBOOK_VOCAB = 4, 64  # tiny FLAVA: 32-px images, 8-px patches -> 4 x 4 grid; codebook input 32 px
FLAVA_SETTINGS = {"mask_grid": GRID, "mask_ratio": 0.5, "mask_min_patches": 2, "codebook_image_size": 8 * GRID,
                  "batch_size": 16, "samples_per_shard": 16}


def _tokenizer(texts, extra=()):
    """A word-level tokenizer trained on the exported captions (no download), BERT-style specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]",
                                   extra_special_tokens={"image_token": extra[0]} if extra else None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    codebook = str(root / "codebook")
    FlavaImageCodebook(FlavaImageCodebookConfig(hidden_size=8, num_groups=4, num_blocks_per_group=1,
                                                vocab_size=CODEBOOK_VOCAB)).save_pretrained(codebook)
    settings = root / "export.yaml"
    settings.write_text(json.dumps({"flava": {**FLAVA_SETTINGS, "codebook": codebook}}))
    synth.generate(str(root / "corpus"), 240, seed=31, noise=0.4, shard_size=120)
    out = str(root / "out")
    report = run.run(["--pipeline", "laion_filter", "--input", str(root / "corpus"), "--output", out,
                      "--set", "shards.samples_per_shard=64", "--set", f"exports=[{', '.join(FORMATS)}]",
                      "--set", f"exports_config={settings}"])
    alone = str(root / "alone")
    # Two worker processes here, one inside laion_filter: the outputs must not depend on it.
    alone_report = run.run(["--pipeline", "export", "--input", os.path.join(out, "shards"), "--output", alone,
                            "--config", str(settings), "--set", f"formats=[{', '.join(FORMATS)}]",
                            "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    return out, report, alone, alone_report


def _same_tree(a: str, b: str) -> list[str]:
    files = sorted(os.path.relpath(p, a) for p in glob.glob(os.path.join(a, "**", "*"), recursive=True) if os.path.isfile(p))
    assert files == sorted(os.path.relpath(p, b) for p in glob.glob(os.path.join(b, "**", "*"), recursive=True)
                           if os.path.isfile(p))
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    return files


def test_laion_filter_exports_equal_the_export_pipeline(exported):
    out, report, alone, alone_report = exported
    kept = report["counts"]["kept"]
    assert alone_report["counts"] == {**alone_report["counts"], "input": kept, "kept": kept, "dropped": 0}
    # the export run counted every curated shard's samples where it read them, and they all have rows
    conservation = alone_report["counts"]["conservation"]
    assert conservation["input_read"] == kept and not conservation["files_uncounted"] and not conservation["problems"]
    for name in FORMATS:
        files = _same_tree(os.path.join(out, "exports", name), os.path.join(alone, name))
        assert files
    sizes = json.load(open(os.path.join(alone, "contrastive", "sizes.json")))
    assert sizes == json.load(open(os.path.join(out, "shards", "sizes.json")))
    assert json.load(open(os.path.join(alone, "blip2", "sizes.json"))) == sizes
    assert json.load(open(os.path.join(alone, "flava", "pairs", "sizes.json"))) == sizes


def test_contrastive_shards_open_clip_reads(exported):
    """open_clip_train's own WebDataset pipeline (get_wds_dataset) yields batches from the export."""
    from types import SimpleNamespace

    import open_clip
    from open_clip_train.data import get_wds_dataset
    from torchvision import transforms

    _, _, alone, _ = exported
    tars = sorted(glob.glob(os.path.join(alone, "contrastive", "*.tar")))
    preprocess = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    args = SimpleNamespace(train_data="::".join(tars), train_num_samples=None, train_data_upsampling_factors=None,
                           dataset_resampled=False, batch_size=8, workers=0, world_size=1, seed=0)
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("RN50"))
    images, texts = next(iter(data.dataloader))
    assert images.shape == (8, 3, 32, 32) and texts.shape == (8, 77)
    total = sum(json.load(open(os.path.join(alone, "contrastive", "sizes.json"))).values())
    assert data.dataloader.num_batches == -(-total // 8)  # the size came from sizes.json


def _batch(pattern: str, n: int, decode="pil"):
    tars = sorted(glob.glob(pattern))
    return [s for _, s in zip(range(n), wds.WebDataset(tars, shardshuffle=False).decode(decode))]


def _tiny_flava(text_vocab: int):
    from transformers import (
        FlavaConfig,
        FlavaForPreTraining,
        FlavaImageCodebookConfig,
        FlavaImageConfig,
        FlavaMultimodalConfig,
        FlavaTextConfig,
    )

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    return FlavaForPreTraining(FlavaConfig(
        image_config=FlavaImageConfig(image_size=8 * GRID, patch_size=8, **small).to_dict(),
        text_config=FlavaTextConfig(vocab_size=text_vocab, max_position_embeddings=64, **small).to_dict(),
        multimodal_config=FlavaMultimodalConfig(**small).to_dict(),
        image_codebook_config=FlavaImageCodebookConfig(hidden_size=8, num_groups=4, num_blocks_per_group=1,
                                                       vocab_size=CODEBOOK_VOCAB).to_dict(),
        hidden_size=32, projection_dim=16))


def _flava_images(images):
    from transformers import FlavaImageProcessor

    size = {"height": 8 * GRID, "width": 8 * GRID}
    return FlavaImageProcessor(size=size, crop_size=size)(images, return_tensors="pt")["pixel_values"]


def _mlm(ids: torch.Tensor, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of the caption tokens (one per caption at least) for FLAVA's MLM/MMM."""
    gen = torch.Generator().manual_seed(0)
    special = torch.isin(ids, torch.tensor([tok.pad_token_id, tok.cls_token_id, tok.sep_token_id]))
    pick = (torch.rand(ids.shape, generator=gen) < 0.3) & ~special
    pick[:, 1] = True
    masked = ids.masked_fill(pick, tok.mask_token_id)
    return masked, ids.masked_fill(~pick, -100)


def test_flava_pretraining_on_exported_pairs(exported):
    """FlavaForPreTraining: image, caption, block mask (bool_masked_pos) and codebook ids (mim_labels),
    all read from the pairs shards; every pretraining loss is finite and backpropagates."""
    _, _, alone, _ = exported
    masking = json.load(open(os.path.join(alone, "flava", "masking.json")))
    assert masking["mask_grid"] == GRID and masking["codebook"]
    batch = _batch(os.path.join(alone, "flava", "pairs", "*.tar"), 6)
    for s in batch:
        assert s["mask.npy"].shape == s["codes.npy"].shape == (GRID, GRID) and s["mask.npy"].any()
        assert s["codes.npy"].min() >= 0 and s["codes.npy"].max() < CODEBOOK_VOCAB
    tok = _tokenizer([s["txt"] for s in batch])
    text = tok([s["txt"] for s in batch], padding=True, return_tensors="pt")
    masked, mlm_labels = _mlm(text["input_ids"], tok)
    model = _tiny_flava(tok.vocab_size)
    out = model(input_ids=text["input_ids"], input_ids_masked=masked, attention_mask=text["attention_mask"],
                pixel_values=_flava_images([s["jpg"] for s in batch]),
                bool_masked_pos=torch.tensor(np.stack([s["mask.npy"] for s in batch])).flatten(1).bool(),
                mim_labels=torch.tensor(np.stack([s["codes.npy"] for s in batch])).flatten(1),
                mlm_labels=mlm_labels, itm_labels=torch.ones(len(batch), dtype=torch.long), return_loss=True)
    assert out.loss_info.mmm_image is not None and out.loss_info.mmm_text is not None
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_flava_unimodal_streams_follow_the_decisions(exported):
    """image_only holds the images dropped for their caption alone, text_only the captions dropped
    for their image alone (caption rules passed, no repeats); FLAVA's MIM and MLM train on them."""
    out, _, alone, _ = exported
    decisions = pq.read_table(os.path.join(out, "decisions")).to_pylist()
    image_only = _batch(os.path.join(alone, "flava", "image_only", "*.tar"), 10_000)
    text_only = _batch(os.path.join(alone, "flava", "text_only", "*.tar"), 10_000)
    caption_dropped = {d["key"] for d in decisions if d["reason"] in IMAGE_ONLY_REASONS}
    image_dropped = {d["key"] for d in decisions if d["reason"] in TEXT_ONLY_REASONS}
    assert image_only and text_only
    assert {s["__key__"] for s in image_only} <= caption_dropped
    assert {s["__key__"] for s in text_only} <= image_dropped
    assert all("txt" not in s and s["mask.npy"].any() for s in image_only)
    captions = [s["txt"] for s in text_only]
    assert len(set(captions)) == len(captions) and all(len(c.split()) >= 3 for c in captions)
    counted = {name: sum(json.load(open(os.path.join(alone, "flava", name, "sizes.json"))).values())
               for name in ("image_only", "text_only")}
    assert counted == {"image_only": len(image_only), "text_only": len(text_only)}

    tok = _tokenizer(captions)
    model = _tiny_flava(tok.vocab_size)
    images = image_only[:4]
    mim = model(pixel_values=_flava_images([s["jpg"] for s in images]),
                bool_masked_pos=torch.tensor(np.stack([s["mask.npy"] for s in images])).flatten(1).bool(),
                mim_labels=torch.tensor(np.stack([s["codes.npy"] for s in images])).flatten(1), return_loss=True)
    text = tok(captions[:4], padding=True, return_tensors="pt")
    masked, labels = _mlm(text["input_ids"], tok)
    mlm = model(input_ids_masked=masked, attention_mask=text["attention_mask"], mlm_labels=labels, return_loss=True)
    loss = mim.loss_info.mim + mlm.loss_info.mlm
    assert torch.isfinite(loss)
    loss.backward()


def test_flava_unimodal_plan_walks_repeats_without_gathering_them():
    """The distributed plan (repeats joined by content and key, groups walked apart, shards cut by
    prefix sums of per-raw-shard counts) equals one walk over every candidate in order, chains of
    repeats included (a, b share a key, b, c an image: a and c are taken)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from curate.exports import flava

    rng = random.Random(4)
    candidates = [flava.Candidate((f"/in/{rng.randrange(3):05d}.tar", i, "d.parquet", i), rng.choice(["image_only", "text_only"]),
                                  f"k{rng.randrange(60)}", f"c{rng.randrange(60)}", (i,)) for i in range(200)]
    candidates += [flava.Candidate(("/in/00009.tar", 0, "", 0), "image_only", "ka", "ca", ("a",)),
                   flava.Candidate(("/in/00009.tar", 1, "", 0), "image_only", "ka", "cb", ("b",)),
                   flava.Candidate(("/in/00009.tar", 2, "", 0), "image_only", "kc", "cb", ("c",))]
    curated = [("image_only", "c1"), ("text_only", "c2"), ("text_only", "c1")]
    taken = flava.first_of_repeats(c for c in candidates if (c.stream, c.content) not in curated)
    assert [c.item for c in taken if c.order[0] == "/in/00009.tar"] == [("a",), ("c",)]
    expected = []
    for stream in ("image_only", "text_only"):
        items = [c.item for c in taken if c.stream == stream]
        expected += [(stream, (start // 7, items[start:start + 7])) for start in range(0, len(items), 7)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        plans = (p | "Candidates" >> beam.Create(candidates)
                 | flava.FirstOfRepeats(p | "Curated" >> beam.Create(curated)) | flava.IntoShards(7))
        assert_that(plans, equal_to(expected))


def test_llava_pretraining_json_and_images(exported):
    """LlavaForConditionalGeneration on records read the way LLaVA's train.py reads them:
    json.load(chat.json), PIL.Image.open(image_folder / record['image'])."""
    from PIL import Image
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    _, report, alone, _ = exported
    records = json.load(open(os.path.join(alone, "llava", "chat.json")))
    assert len(records) == report["counts"]["kept"]
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        assert os.path.isfile(os.path.join(alone, "llava", "images", r["image"]))
    batch = records[:4]
    images = [Image.open(os.path.join(alone, "llava", "images", r["image"])).convert("RGB") for r in batch]
    texts = [r["conversations"][0]["value"] + "\n" + r["conversations"][1]["value"] for r in batch]
    tok = _tokenizer(texts, extra=("<image>",))
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)  # CLIP's CLS, dropped by "default"
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [16] * len(batch)  # (32 / 8)^2 patches each
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128),
        image_token_index=image_id, image_seq_length=16, vision_feature_layer=-1))
    labels = inputs["input_ids"].masked_fill((inputs["input_ids"] == image_id) | (inputs["attention_mask"] == 0), -100)
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_blip2_shards_as_lavis_reads_them(exported):
    """Blip2ForConditionalGeneration on a batch read as LAVIS's LAION builder does:
    WebDataset(...).decode("pilrgb").to_tuple("jpg", "json"), caption = json["caption"]."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    _, _, alone, _ = exported
    tars = sorted(glob.glob(os.path.join(alone, "blip2", "*.tar")))
    pairs = [x for _, x in zip(range(4), wds.WebDataset(tars, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "json"))]
    assert all(set(meta) == {"caption"} for _, meta in pairs)
    captions = [meta["caption"] for _, meta in pairs]
    queries = 4
    tok = _tokenizer(captions)  # Blip2Processor adds its own <image> token (it fails on a tokenizer that has one)
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tok, num_query_tokens=queries)
    inputs = processor(images=[img for img, _ in pairs], text=captions, padding=True, return_tensors="pt")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [queries] * len(pairs)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=Blip2VisionConfig(image_size=32, patch_size=8, **small).to_dict(),
        qformer_config=Blip2QFormerConfig(vocab_size=len(tok), encoder_hidden_size=32, **small).to_dict(),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128).to_dict(),
        num_query_tokens=queries, image_token_index=image_id))
    labels = inputs["input_ids"].masked_fill((inputs["input_ids"] == image_id) | (inputs["attention_mask"] == 0), -100)
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_block_mask_is_beit_block_masking_and_reproducible():
    state = random.getstate()
    a = block_mask("k1", 14, 0.4, seed=3)
    assert random.getstate() == state  # the global generator is left as it was
    assert np.array_equal(a, block_mask("k1", 14, 0.4, seed=3))
    assert not np.array_equal(a, block_mask("k2", 14, 0.4, seed=3))
    assert a.shape == (14, 14) and a.dtype == np.uint8
    assert 16 <= a.sum() <= round(0.4 * 196)  # blocks of >= 16 patches until the budget (BEiT) is spent
    assert block_mask("k1", 14, 0.0).sum() == 0


@pytest.mark.parametrize("sets,expect", [
    (["--set", "llava.prompts=[no image here]"], "llava.prompts must be a non-empty list"),
    (["--set", "flava.codebook=/nonexistent"], "flava.codebook '/nonexistent' is not a folder"),
    (["--set", "formats=[contrastive, dalle]"], "formats must be a list of contrastive"),
    (["--set", "formats=[]"], "formats is empty"),
])
def test_export_config_errors_are_one_line_and_write_nothing(exported, tmp_path, capsys, sets, expect):
    out, *_ = exported
    target = tmp_path / "export"
    assert run.main(["--pipeline", "export", "--input", os.path.join(out, "shards"), "--output", str(target),
                     "--set", "formats=[flava, llava]", *sets]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_unimodal_needs_a_laion_filter_run_and_a_missing_format_is_named(exported, tmp_path, capsys, monkeypatch):
    out, *_ = exported
    loose = tmp_path / "loose"
    loose.mkdir()
    for tar in glob.glob(os.path.join(out, "shards", "*.tar")):
        os.symlink(tar, loose / os.path.basename(tar))
    args = ["--pipeline", "export", "--input", str(loose), "--output", str(tmp_path / "x")]
    assert run.main([*args, "--set", "formats=[flava]"]) == 2
    assert "holds no laion_filter run" in capsys.readouterr().err
    monkeypatch.setitem(export.FORMATS, "llava", ("curate.exports.not_there", "LlavaExport"))
    monkeypatch.setattr(export, "_loaded", {})
    assert run.main([*args, "--set", "formats=[llava]"]) == 2
    assert "export format 'llava' is not available here (ModuleNotFoundError" in capsys.readouterr().err


def test_export_reads_and_writes_remote_paths(exported):
    """The run's folder and the export on fsspec's in-memory filesystem: the same files, byte for byte."""
    import fsspec

    out, _report, alone, alone_report = exported
    memory = fsspec.filesystem("memory")
    try:
        for path in glob.glob(os.path.join(out, "**", "*"), recursive=True) + [os.path.join(out, ".curate_run.json")]:
            rel = os.path.relpath(path, out)
            if os.path.isfile(path) and rel.split(os.sep)[0] in ("shards", "decisions", ".curate_run.json"):
                memory.pipe(f"/run/{rel}", open(path, "rb").read())
        report = run.run(["--pipeline", "export", "--input", "memory://run/shards", "--output", "memory://exp",
                          "--config", os.path.join(os.path.dirname(out), "export.yaml"),
                          "--set", f"formats=[{', '.join(FORMATS)}]"])
        assert report["counts"] == alone_report["counts"]
        for name in FORMATS:
            local = sorted(os.path.relpath(p, alone) for p in glob.glob(os.path.join(alone, name, "**", "*"),
                                                                          recursive=True) if os.path.isfile(p))
            remote = sorted(p.split("/exp/", 1)[1] for p in memory.find(f"/exp/{name}"))
            assert remote == local and local
            for rel in local:
                assert memory.cat(f"/exp/{rel}") == open(os.path.join(alone, rel), "rb").read(), rel
    finally:
        for root in ("/run", "/exp"):
            if memory.exists(root):
                memory.rm(root, recursive=True)
