"""Curated shards feed a real trainer unchanged: open_clip_train runs on them, sizes.json included."""
import glob
import os
import subprocess
import sys

import pytest

from curate import run, synth


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    corpus = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(corpus, 500, seed=23, noise=0.2, shard_size=250)
    out = tmp_path_factory.mktemp("out")
    run.run(["--pipeline", "laion_filter", "--input", corpus, "--output", str(out),
             "--set", "shards.samples_per_shard=128"])
    return out


def test_open_clip_train_reads_the_curated_shards(curated, tmp_path):
    tars = sorted(glob.glob(str(curated / "shards" / "*.tar")))
    assert len(tars) >= 2
    first, last = os.path.basename(tars[0])[:-4], os.path.basename(tars[-1])[:-4]
    train_data = str(curated / "shards" / f"{{{first}..{last}}}.tar")
    # No --train-num-samples: open_clip_train takes the dataset size from sizes.json beside the tars.
    code = ("from curate.models.clip import register_model_configs; register_model_configs(); "
            "import sys, open_clip_train.main as m; m.main(sys.argv[1:])")
    p = subprocess.run([sys.executable, "-c", code, "--train-data", train_data, "--dataset-type", "webdataset",
                        "--model", "curate-demo-64", "--batch-size", "32", "--epochs", "1", "--workers", "1",
                        "--precision", "fp32", "--logs", str(tmp_path), "--name", "smoke", "--report-to", "",
                        "--log-every-n-steps", "1", "--save-frequency", "1", "--seed", "0"],
                       capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert "Train Epoch: 0" in log and "Contrastive_loss" in log
    assert os.path.exists(tmp_path / "smoke" / "checkpoints" / "epoch_1.pt")
