"""Train the demo scorer: a 64-px open_clip model on clean synthetic pairs in all five languages.

    python -m curate.models.train_demo_scorer [--work DIR] [--samples 30000] [--epochs 3]

No CLIP weights can be downloaded where curate is built and tested, so it ships this small model
instead. The script writes clean shards with curate.synth, trains with open_clip_train (the same
trainer users run on curated shards), then stores the final weights as fp16 state dict in
curate/models/demo_scorer.pt and prints the held-out true-vs-mismatched accuracy.
Reproducible: fixed seeds for data and trainer; about 15 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import torch

from curate import synth
from curate.models.clip import DEMO_CHECKPOINT, DEMO_MODEL, register_demo_config

TRAIN_SEED = 1000  # the corpus seeds used by tests and demos (0, 1, ...) stay held out


def train(work: str, samples: int, epochs: int, batch_size: int, lr: float) -> str:
    import open_clip_train.main as trainer

    data = os.path.join(work, "train")
    if not os.path.exists(os.path.join(data, "ground_truth.parquet")):
        synth.generate(data, samples, seed=TRAIN_SEED, noise=0.0, shard_size=1000,
                       processes=os.cpu_count() or 1)
    shards = sorted(glob.glob(os.path.join(data, "*.tar")))
    pattern = os.path.join(data, "{%s..%s}.tar" % (os.path.basename(shards[0])[:-4],
                                                    os.path.basename(shards[-1])[:-4]))
    register_demo_config()
    name = f"demo-{int(time.time())}"
    trainer.main([
        "--train-data", pattern, "--train-num-samples", str(samples), "--dataset-type", "webdataset",
        "--model", DEMO_MODEL, "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", str(lr), "--wd", "0.1", "--warmup", "100", "--workers", "2",
        "--precision", "fp32", "--seed", "0", "--logs", os.path.join(work, "logs"), "--name", name,
        "--save-frequency", "1", "--log-every-n-steps", "50", "--report-to", "",
    ])
    ckpt = os.path.join(work, "logs", name, "checkpoints", f"epoch_{epochs}.pt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    state = {k.removeprefix("module."): v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, DEMO_CHECKPOINT)
    return DEMO_CHECKPOINT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="work-tmp/demo-scorer", help="scratch folder for shards and logs")
    ap.add_argument("--samples", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    path = train(args.work, args.samples, args.epochs, args.batch_size, args.lr)
    size = os.path.getsize(path) / 1e6
    print(f"saved {path} ({size:.1f} MB)")
    from curate.models.clip import heldout_accuracy
    acc = heldout_accuracy(os.path.join(args.work, "heldout"), samples=2000, seed=7)
    print(f"held-out true caption beats a mismatched one: {acc:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
