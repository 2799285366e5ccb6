"""Train the demo scorer: a 64-px open_clip model on clean synthetic pairs in all five languages.

    python -m curate.models.train_demo_scorer [--work DIR] [--samples 30000] [--epochs 3]

No CLIP weights can be downloaded where curate is built and tested, so it ships this small model
instead. The script writes clean shards with curate.synth and trains in two phases:

1. open_clip_train (the trainer users run on curated shards), CLIP's contrastive loss.
2. A short fine-tune that adds an instance-discrimination loss (SimCLR-style InfoNCE between an
   image and a re-encoded / rescaled / cropped copy of it) to the CLIP loss. In a world where
   captions say everything about a scene, CLIP's loss alone collapses all images with similar
   captions onto one point, and its image embedding cannot tell a copy from a different picture;
   web-scale CLIP learns that distinction from the variety of real captions. Phase 2 restores
   it, so near-duplicate removal over the demo scorer's image embeddings behaves as with CLIP.

The final weights go to curate/models/demo_scorer.pt (fp16 state dict); the script prints the
held-out true-vs-mismatched accuracy. Fixed seeds; about 20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import torch

from curate import synth
from curate.models.clip import DEMO_CHECKPOINT, DEMO_MODEL, register_model_configs

TRAIN_SEED = 1000  # the corpus seeds used by tests and demos (0, 1, ...) stay held out


def train(work: str, samples: int, epochs: int, batch_size: int, lr: float) -> dict:
    import open_clip_train.main as trainer

    data = os.path.join(work, "train")
    if not os.path.exists(os.path.join(data, "ground_truth.parquet")):
        synth.generate(data, samples, seed=TRAIN_SEED, noise=0.0, shard_size=1000,
                       processes=os.cpu_count() or 1)
    shards = sorted(glob.glob(os.path.join(data, "*.tar")))
    pattern = os.path.join(data, "{%s..%s}.tar" % (os.path.basename(shards[0])[:-4],
                                                    os.path.basename(shards[-1])[:-4]))
    register_model_configs()
    name = f"demo-{int(time.time())}"
    trainer.main([
        "--train-data", pattern, "--train-num-samples", str(samples), "--dataset-type", "webdataset",
        "--model", DEMO_MODEL, "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", str(lr), "--wd", "0.1", "--warmup", "100", "--workers", "2",
        "--precision", "fp32", "--seed", "0", "--logs", os.path.join(work, "logs"), "--name", name,
        "--save-frequency", "1", "--log-every-n-steps", "50", "--report-to", "",
    ])
    return load_phase1(os.path.join(work, "logs", name, "checkpoints", f"epoch_{epochs}.pt"))


def load_phase1(ckpt: str) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _copy_augment(img, rng) -> bytes:
    """A copy as the web makes them: JPEG re-encoded, rescaled (at times unevenly) or cropped 2-5%
    a side. Harsher than curate.synth's near duplicates, so the invariance learnt covers them."""
    kind = rng.integers(3)
    if kind == 1:
        f = float(rng.uniform(0.8, 0.95))
        img = img.resize((max(200, int(img.width * f)), max(200, int(img.height * f))))
    elif kind == 2:
        dx, dy = int(img.width * rng.uniform(0.02, 0.05)), int(img.height * rng.uniform(0.02, 0.05))
        img = img.crop((dx, dy, img.width - dx, img.height - dy))
    quality = int(rng.integers(60, 96))
    return synth.encode_jpeg(img, quality - 5 if quality == 90 else quality)


class _Pairs(torch.utils.data.Dataset):
    """(CLIP view, copy view, tokens) per sample; the copy is made as synth makes near duplicates."""

    def __init__(self, shard_dir: str, transform, tokenizer):
        from curate.io import iter_tar_samples
        self.items = [(f["jpg"], f["txt"].decode()) for p in sorted(glob.glob(os.path.join(shard_dir, "*.tar")))
                      for _k, f in iter_tar_samples(p)]
        self.transform, self.tokenizer = transform, tokenizer

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import io

        import numpy as np
        from PIL import Image
        data, text = self.items[i]
        img = Image.open(io.BytesIO(data)).convert("RGB")
        rng = np.random.default_rng([TRAIN_SEED, i, torch.initial_seed() % 2**31])
        copy = Image.open(io.BytesIO(_copy_augment(img, rng))).convert("RGB")
        return self.transform(img), self.transform(copy), self.tokenizer([text])[0]


def finetune_instance_aware(state: dict, shard_dir: str, epochs: int = 1, batch_size: int = 128,
                            lr: float = 3e-4, instance_weight: float = 1.0, temperature: float = 0.05) -> dict:
    """Phase 2: CLIP loss + InfoNCE between each image and its copy, on the same image embedding."""
    import open_clip
    import torch.nn.functional as F

    from curate.models.clip import ScorerSpec, image_transform, tokenizer

    spec = ScorerSpec()
    register_model_configs()
    model = open_clip.create_model(DEMO_MODEL)
    model.load_state_dict(state)
    model.train()
    data = _Pairs(shard_dir, image_transform(spec), tokenizer(DEMO_MODEL))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=2,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    step = 0
    for _epoch in range(epochs):
        for view, copy, tokens in loader:
            img = model.encode_image(torch.cat([view, copy]), normalize=True)
            a, b = img[: len(view)], img[len(view):]
            txt = model.encode_text(tokens, normalize=True)
            labels = torch.arange(len(view))
            logits = model.logit_scale.exp() * a @ txt.T
            clip_loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            inst = a @ b.T / temperature
            inst_loss = (F.cross_entropy(inst, labels) + F.cross_entropy(inst.T, labels)) / 2
            loss = clip_loss + instance_weight * inst_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 25 == 0 or step == steps:
                print(f"finetune step {step}/{steps}: clip {clip_loss.item():.3f} instance {inst_loss.item():.3f}",
                      flush=True)
    return model.state_dict()


def save(state: dict) -> str:
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, DEMO_CHECKPOINT)
    return DEMO_CHECKPOINT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="work-tmp/demo-scorer", help="scratch folder for shards and logs")
    ap.add_argument("--samples", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--phase1-checkpoint", help="skip phase 1: start from this open_clip_train checkpoint")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.phase1_checkpoint:
        state = load_phase1(args.phase1_checkpoint)
    else:
        state = train(args.work, args.samples, args.epochs, args.batch_size, args.lr)
    torch.manual_seed(0)
    state = finetune_instance_aware(state, os.path.join(args.work, "train"), args.finetune_epochs)
    path = save(state)
    size = os.path.getsize(path) / 1e6
    print(f"saved {path} ({size:.1f} MB)")
    from curate.models.clip import heldout_accuracy
    acc = heldout_accuracy(os.path.join(args.work, "heldout"), samples=2000, seed=7)
    print(f"held-out true caption beats a mismatched one: {acc:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
