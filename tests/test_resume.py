"""Crash and resume: SIGKILL a laion_filter run at several points, find every file under a final name
complete, rerun the same command, and get the bytes of an uninterrupted run, with no truncated,
temporary or orphaned file left behind; the rerun scores only the input shards the killed run had
not finished (curate.resume).

The kills cover the writers of the score pipeline too (the scored shards' parts and markers, the
decisions table: the same code as score's, whose own crash test is below); the export pipeline is
killed here too; ingest's kill test is in test_ingest.py, the Chameleon export's resume in
test_export_chameleon.py. Every kill checks, before the rerun, that every file under a final name
is whole (complete_files.assert_complete)."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from complete_files import assert_complete
from curate.pipelines import score

from curate import run, scoring, synth

OUTPUTS = ("shards", "decisions", "embeddings")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, 600, seed=17, noise=0.3, shard_size=200)
    return out


def command(corpus, out):
    # Without save_embeddings the scored shards are checkpointed in OUT/.resume, removed once the run
    # completes (the score test below checks the parts written to OUT/embeddings).
    return [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input", corpus,
            "--output", str(out), "--set", "shards.samples_per_shard=100", "--set", "scorer.batch_size=16",
            "--set", "save_embeddings=false"]


def files(out):
    found = {}
    for sub in OUTPUTS:
        for dirpath, _dirs, names in os.walk(os.path.join(out, sub)):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, out)] = f.read()
    return found


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(command(corpus, out), check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def reference(reference_run):
    return files(reference_run)


def _first_file(out, sub):
    return lambda: any(names for _d, _s, names in os.walk(os.path.join(out, sub)))


# Kills while scoring and while writing; a kill at start-up (before any output) resumes the same way.
@pytest.mark.parametrize("when", ["once a shard is scored", "once a shard appears"])
def test_killed_run_resumes_to_the_same_bytes(corpus, reference, tmp_path, when):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = {"at start-up": lambda: (out / ".curate_run.json").exists(),
             "once a shard is scored": lambda: bool(glob.glob(str(out / ".resume" / "*.json"))),
             "once a shard appears": _first_file(out, "shards")}[when]
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "report.json").exists()
    assert assert_complete(out) >= 1  # issue 14 item 4: checked before the rerun rewrites anything
    scored = sorted(int(os.path.basename(p)[:5]) for p in glob.glob(str(out / ".resume" / "*.json")))
    if when != "at start-up":
        assert scored, "killed before any input shard was checkpointed"
    rerun = subprocess.run(command(corpus, out), check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # Issue 15 item 5: each shard the killed run had scored is reused, neither read nor scored again.
    reused = sorted(int(n) - 1 for n in re.findall(r"shard (\d+)/3 \S+: scored before the interruption", rerun.stderr))
    read = {int(n) - 1 for n in re.findall(r"reading shard (\d+)/3", rerun.stderr)}
    assert reused == scored and not read & set(scored) and read | set(scored) == {0, 1, 2}
    assert not (out / ".resume").exists()
    got = files(out)
    assert sorted(got) == sorted(reference)  # nothing missing, nothing orphaned
    assert all(got[name] == reference[name] for name in reference)
    leftovers = [n for _d, _s, names in os.walk(out) for n in names if ".tmp-" in n]
    assert not leftovers


def test_other_settings_in_the_same_folder_are_refused(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--pipeline", "laion_filter", "--input", corpus, "--output", str(out)]
    run.run([*args, "--set", "dedup.near=false"])
    assert run.main([*args, "--set", "dedup.near=true"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("small"))
    synth.generate(out, 60, seed=5, noise=0.3, shard_size=20)
    return out


def test_a_resumed_score_run_scores_only_the_shards_it_had_not_finished(small, tmp_path, monkeypatch):
    """Issue 15 item 5, in process: a model that fails on the second input shard it sees leaves the
    first one checkpointed; the rerun neither reads nor scores it (model calls counted) and writes the
    bytes of an uninterrupted run. (laion_filter: the kill tests above.)"""
    def args(out):
        return ["--pipeline", "score", "--input", small, "--output", str(out), "--set", "scorer.batch_size=8"]

    encode, read_shard = scoring.OpenClipModelHandler.run_inference, score.read_shard
    calls, reads, crash = [], [], False

    def counted(self, batch, model, inference_args=None):
        calls.append(batch[0].samples[0].shard_index)
        if crash and len(set(calls)) == 2:
            raise RuntimeError("simulated crash")
        return encode(self, batch, model, inference_args)

    monkeypatch.setattr(scoring.OpenClipModelHandler, "run_inference", counted)
    monkeypatch.setattr(score, "read_shard", lambda i, path, total: reads.append(i) or read_shard(i, path, total))
    reference = run.run(args(tmp_path / "reference"))
    batches = Counter(calls)  # model calls per input shard in an uninterrupted run
    assert sorted(batches) == [0, 1, 2]

    calls.clear()
    out, crash = tmp_path / "out", True
    with pytest.raises(Exception, match="simulated crash"):
        run.run(args(out))
    finished = calls[0]
    assert [os.path.basename(p) for p in glob.glob(str(out / ".resume" / "*.json"))] == [f"{finished:05d}.json"]
    assert os.listdir(out / "embeddings" / "metadata") == [f"metadata_{finished}.parquet"]
    assert assert_complete(out) >= 4  # the run marker, the shard's part (3 files) and its marker

    calls.clear()
    reads.clear()
    crash = False
    report = run.run(args(out))
    assert Counter(calls) == {shard: n for shard, n in batches.items() if shard != finished}
    assert sorted(reads) == sorted({0, 1, 2} - {finished})
    assert files(out) == files(tmp_path / "reference")
    assert report["counts"] == reference["counts"]
    assert not (out / ".resume").exists()


def test_killed_export_leaves_only_complete_files_and_resumes(reference_run, tmp_path):
    """The export pipeline killed once its first format file appears: every file under a final name
    is whole before the rerun (issue 14 item 4), and the rerun finishes with every sample exported."""
    out = tmp_path / "export"
    cmd = [sys.executable, "-m", "curate.run", "--pipeline", "export", "--input", str(reference_run / "shards"),
           "--output", str(out), "--set", "formats=[contrastive, llava, blip2]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not _first_file(out, "contrastive")() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the export ended before it could be killed"
    assert not (out / "report.json").exists()
    assert assert_complete(out) >= 1
    rerun = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    kept = sum(json.loads((reference_run / "shards" / "sizes.json").read_text()).values())
    assert report["counts"]["input"] == report["counts"]["kept"] == kept
    assert json.loads((out / "contrastive" / "sizes.json").read_text()) == json.loads(
        (reference_run / "shards" / "sizes.json").read_text())
    assert assert_complete(out) >= 1
    assert not [n for _d, _s, names in os.walk(out) for n in names if ".tmp-" in n]

