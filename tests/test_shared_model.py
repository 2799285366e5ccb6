"""scorer.share_model: one model per machine, served to Beam's local worker processes."""
from __future__ import annotations

import glob
import os
import tempfile

import pyarrow.parquet as pq

from curate import resume, run, scoring, synth
from curate.models import clip

# Loaded at start-up by every Python process the test starts (workers, and the model process they
# spawn): each model load appends the loading process's id to a file.
SITECUSTOMIZE = '''
import os
if os.environ.get("CURATE_TEST_LOADS"):
    import curate.models.clip as clip
    _load = clip.load_model
    def _counted(spec):
        with open(os.environ["CURATE_TEST_LOADS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        return _load(spec)
    clip.load_model = _counted
'''


def _scores(out: str) -> dict[str, float]:
    return {r["key"]: r["clip_score"] for f in sorted(glob.glob(f"{out}/embeddings/metadata/*.parquet"))
            for r in pq.read_table(f).to_pylist()}


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_handler_says_whether_the_model_is_shared():
    assert not scoring.OpenClipModelHandler(clip.ScorerSpec()).share_model_across_processes()
    assert scoring.OpenClipModelHandler(clip.ScorerSpec(), share_model=True).share_model_across_processes()


def test_two_workers_share_one_model_loaded_once_with_the_same_scores(tmp_path, monkeypatch):
    corpus = str(tmp_path / "corpus")
    synth.generate(corpus, 24, seed=8, noise=0.2, shard_size=6)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    loads = tmp_path / "loads.txt"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CURATE_TEST_LOADS", str(loads))
    common = ["--pipeline", "score", "--input", corpus, "--set", "scorer.batch_size=4"]
    run.run([*common, "--output", str(tmp_path / "own")])  # one process, its own model (not counted: in-process)
    temp_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "curate-clip-*")))
    report = run.run([*common, "--output", str(tmp_path / "shared"), "--set", "scorer.share_model=true",
                      "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    # the model process's lock and address files lived in the run's checkpoint folder, now gone
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "curate-clip-*"))) == temp_before
    assert not os.path.exists(resume.folder(str(tmp_path / "shared")))
    assert report["config"]["scorer.share_model"] is True
    pids = loads.read_text().split()
    assert len(pids) == 1, pids   # one model for both workers, in a process of its own
    assert not _running(int(pids[0]))   # the model process does not outlive the run
    own, shared = _scores(str(tmp_path / "own")), _scores(str(tmp_path / "shared"))
    assert len(own) >= 20 and own == shared
