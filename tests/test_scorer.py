"""The demo scorer and the open_clip RunInference handler."""
import numpy as np
import pytest
import torch

from curate.models import clip
from curate.records import Sample
from curate.scoring import ClipBatch, OpenClipModelHandler


def test_demo_scorer_prefers_the_true_caption(tmp_path):
    """On held-out synthetic pairs (a seed never trained on) the true caption wins >= 95% of the time."""
    acc = clip.heldout_accuracy(str(tmp_path), samples=600, seed=7)
    print(f"held-out accuracy {acc:.1%}")
    assert acc >= 0.95


def test_demo_checkpoint_is_small_and_fp16():
    import os
    assert os.path.getsize(clip.DEMO_CHECKPOINT) < 20e6
    state = torch.load(clip.DEMO_CHECKPOINT, map_location="cpu")
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("spec,expect", [
    (clip.ScorerSpec(model="ViT-B-32", pretrained="demo"), "only fits scorer.model=curate-demo-64"),
    (clip.ScorerSpec(model="ViT-B-32", pretrained="/no/such/file.pt"), "neither a file nor a known tag"),
    (clip.ScorerSpec(model="nope"), "unknown open_clip model"),
])
def test_spec_validation(spec, expect):
    with pytest.raises(clip.ModelLoadError, match=expect):
        clip.validate(spec)


def test_known_tag_and_local_checkpoint_validate(tmp_path):
    clip.validate(clip.ScorerSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"x")
    clip.validate(clip.ScorerSpec(model="ViT-B-32", pretrained=str(ckpt)))


def test_local_checkpoint_loads_like_the_demo(tmp_path):
    """Any open_clip checkpoint on disk is one config change away: here, the demo weights by path."""
    by_path = clip.load_model(clip.ScorerSpec(pretrained=clip.DEMO_CHECKPOINT))
    demo = clip.load_model(clip.ScorerSpec())
    for (k, a), (_, b) in zip(by_path.state_dict().items(), demo.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_out_of_memory_batches_are_split_not_lost(monkeypatch):
    spec = clip.ScorerSpec()
    handler = OpenClipModelHandler(spec)
    model = handler.load_model()
    images = torch.randn(8, 3, 64, 64)
    tokens = clip.tokenizer(spec.model)(["a red circle on the left"] * 8)
    samples = [Sample(str(i), 0, "x.tar", i) for i in range(8)]
    batch = [ClipBatch(samples, images, tokens)]
    (expected,) = [r.inference for r in handler.run_inference(batch, model)]
    real_encode, calls = clip.encode, []

    def flaky(model, spec, imgs, toks):
        calls.append(len(imgs))
        if len(imgs) > 2:
            raise torch.cuda.OutOfMemoryError("injected")
        return real_encode(model, spec, imgs, toks)

    monkeypatch.setattr(clip, "encode", flaky)
    (result,) = handler.run_inference(batch, model)
    assert calls[:3] == [8, 4, 2] and result.example is batch[0]
    np.testing.assert_allclose(expected[0], result.inference[0], atol=1e-5)
    np.testing.assert_allclose(expected[1], result.inference[1], atol=1e-5)
    assert result.inference[0].shape == (8, 64)


def test_extreme_images_and_huge_captions_are_prepared_cheaply():
    """A 1 x 100,000 image and a 10 MB caption become ordinary model inputs, fast."""
    import time

    from PIL import Image

    from curate.scoring import ClipPreprocessor

    prep = ClipPreprocessor(clip.ScorerSpec())
    t0 = time.perf_counter()
    for size in ((1, 100_000), (100_000, 1), (300, 200)):
        tensor, tokens = prep(Image.new("RGB", size, (200, 10, 10)), "word " * 2_000_000)
        assert tensor.shape == (3, 64, 64) and tokens.shape == (77,)
    assert time.perf_counter() - t0 < 10


def test_bounded_aspect_leaves_filterable_images_alone():
    from PIL import Image

    from curate.scoring import _bounded_aspect

    img = Image.new("RGB", (2000, 100))
    assert _bounded_aspect(img) is img
    assert _bounded_aspect(Image.new("RGB", (3000, 100))).size == (2000, 100)
    assert _bounded_aspect(Image.new("RGB", (100, 3000))).size == (100, 2000)
