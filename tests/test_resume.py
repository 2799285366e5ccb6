"""Crash and resume: SIGKILL a laion_filter run at several points, rerun the same command, and get
the bytes of an uninterrupted run, with no truncated, temporary or orphaned file left behind."""
import os
import signal
import subprocess
import sys
import time

import pytest

from curate import run, synth

OUTPUTS = ("shards", "decisions", "embeddings")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, 600, seed=17, noise=0.3, shard_size=200)
    return out


def command(corpus, out):
    return [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input", corpus,
            "--output", str(out), "--set", "shards.samples_per_shard=100", "--set", "scorer.batch_size=16"]


def files(out):
    found = {}
    for sub in OUTPUTS:
        for dirpath, _dirs, names in os.walk(os.path.join(out, sub)):
            for name in names:
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(command(corpus, out), check=True, capture_output=True, timeout=300)
    return files(out)


def _first_file(out, sub):
    return lambda: any(names for _d, _s, names in os.walk(os.path.join(out, sub)))


@pytest.mark.parametrize("when", ["at start-up", "once embeddings appear", "once a shard appears"])
def test_killed_run_resumes_to_the_same_bytes(corpus, reference, tmp_path, when):
    out = tmp_path / "out"
    proc = subprocess.Popen(command(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = {"at start-up": lambda: (out / ".curate_run.json").exists(),
             "once embeddings appear": _first_file(out, "embeddings"),
             "once a shard appears": _first_file(out, "shards")}[when]
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "report.json").exists()
    rerun = subprocess.run(command(corpus, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
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
