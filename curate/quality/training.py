"""Train one open_clip model on one subset with open_clip_train, at a fixed number of samples seen.

DataComp's rule: every candidate subset trains the same model for the same number of samples seen,
so a smaller subset is repeated more often. Here the shards are drawn with replacement
(``--dataset-resampled``, as DataComp's training runs do) and the epoch is the whole budget, so each
run sees exactly ``samples_seen_for(...)`` samples whatever the subset's size. Each run is a
subprocess (open_clip_train's logging and seeding are process-wide); a finished checkpoint is
reused, so a rerun of the comparison resumes where it stopped.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

# the trainer's own split of a member name into key and extensions
from webdataset.tariterators import base_plus_ext

IMAGE_EXTS = {"jpg", "png", "jpeg", "webp"}  # open_clip_train's rename(image="jpg;png;jpeg;webp")


@dataclass(frozen=True)
class TrainSettings:
    model: str
    samples_seen: int
    batch_size: int
    lr: float
    workers: int
    device: str  # cpu | cuda


@dataclass(frozen=True)
class Subset:
    """A named training set: a folder of WebDataset tars (raw shards or curated OUT/shards)."""
    name: str
    path: str

    def tars(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, "*.tar")))

    def unique_samples(self) -> int:
        """Samples open_clip_train can read: sizes.json when the folder has one (curated shards),
        else counted from the tars' member names (``trainable_samples``)."""
        sizes = os.path.join(self.path, "sizes.json")
        if os.path.exists(sizes):
            with open(sizes) as f:
                return sum(json.load(f).values())
        return sum(trainable_samples(tar) for tar in self.tars())


def trainable_samples(tar: str) -> int:
    """Samples of one tar that open_clip_train's reader can use: members grouped by WebDataset's rule
    (key = the name up to the first dot of its last path part), with an image (jpg, png, jpeg, webp)
    and a ``txt`` caption. Its resampled loader waits forever on shards that hold none, so a subset
    without any is refused before training."""
    members: dict[str, set[str]] = {}
    with tarfile.open(tar) as f:
        for m in f:
            key, ext = base_plus_ext(m.name) if m.isfile() else (None, None)
            if key is not None:
                members.setdefault(key, set()).add(ext.lower())
    return sum(1 for exts in members.values() if "txt" in exts and exts & IMAGE_EXTS)


def samples_seen_for(settings: TrainSettings) -> int:
    """What open_clip_train will actually train on: the budget rounded up to whole batches per worker
    (its get_wds_dataset's rounding), the same for every subset."""
    workers = max(1, settings.workers)
    batches = math.ceil(math.ceil(settings.samples_seen / settings.batch_size) / workers) * workers
    return batches * settings.batch_size


def trainer_args(subset: Subset, settings: TrainSettings, seed: int, logs: str, name: str) -> list[str]:
    steps = math.ceil(settings.samples_seen / settings.batch_size)
    return [
        "--train-data", "::".join(subset.tars()), "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(settings.samples_seen), "--epochs", "1",
        "--model", settings.model, "--batch-size", str(settings.batch_size), "--lr", str(settings.lr),
        "--wd", "0.1", "--warmup", str(max(1, steps // 20)), "--workers", str(settings.workers),
        "--precision", "fp32" if settings.device == "cpu" else "amp", "--device", settings.device,
        "--seed", str(seed), "--logs", logs, "--name", name, "--save-frequency", "1",
        "--log-every-n-steps", str(max(1, steps // 10)), "--report-to", "",
    ]


FINISHED = "finished"
_LAUNCH = ("from curate.models.clip import register_model_configs; register_model_configs(); "
           "import sys, open_clip_train.main as m; m.main(sys.argv[1:])")
_PROGRESS = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/(\d+)")


def train(subset: Subset, settings: TrainSettings, seed: int, logs: str, label: str) -> str:
    """Train (or reuse) the checkpoint of (subset, seed); return its path. Progress goes to stdout."""
    if not subset.tars():
        raise ValueError(f"--subset {subset.name}={subset.path}: no .tar in that folder")
    name = f"{subset.name}-seed{seed}"
    checkpoint = os.path.join(logs, name, "checkpoints", "epoch_1.pt")
    finished = os.path.join(logs, name, FINISHED)  # open_clip_train saves in place: trust only a finished run
    if os.path.exists(finished):
        print(f"[quality] {label}: reusing {checkpoint}", flush=True)
        return checkpoint
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)  # open_clip_train refuses an existing name
    os.makedirs(logs, exist_ok=True)
    t0 = time.time()
    cmd = [sys.executable, "-c", _LAUNCH, *trainer_args(subset, settings, seed, logs, name)]
    log_path = os.path.join(logs, f"{name}.log")
    with open(log_path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                       text=True) as proc:
        for line in proc.stdout:
            log.write(line)
            m = _PROGRESS.search(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                rate = done / max(time.time() - t0, 1e-9)
                print(f"[quality] {label}: {done:,}/{total:,} samples seen, {rate:,.0f}/s", flush=True)
    if proc.returncode != 0 or not os.path.exists(checkpoint):
        raise RuntimeError(f"open_clip_train failed on subset {subset.name} (seed {seed}), exit {proc.returncode}; "
                           f"its log: {log_path}")
    open(finished, "w").close()
    print(f"[quality] {label}: done in {time.time() - t0:.0f}s", flush=True)
    return checkpoint
