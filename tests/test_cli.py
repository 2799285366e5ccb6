"""The command line: help, one-line errors before any work is done, and what may happen to an output folder."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from curate.pipelines.specs import PIPELINES
from ingest_server import FaultServer, image_caption

from curate import run, synth


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "curate.run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_lists_pipelines_and_configs():
    p = cli("--help")
    assert p.returncode == 0
    assert "laion_filter" in p.stdout and "configs/laion_filter.yaml" in p.stdout.replace(os.sep, "/")
    assert "--direct_num_workers" in p.stdout


@pytest.mark.parametrize("args,expect", [
    (["--pipeline", "nope"], "unknown pipeline 'nope'; choose one of: "),  # the names follow, sorted
    (["--pipeline", "laion_filter", "--set", "filters.min_size=3"], "unknown key 'filters.min_size'"),
    (["--pipeline", "laion_filter", "--set", "dedup.near_threshold=1.5"], "dedup.near_threshold must be"),
    (["--pipeline", "laion_filter", "--set", "decontaminate.eval_set=/nonexistent/eval"],
     "decontaminate.eval_set '/nonexistent/eval' does not exist"),
    (["--pipeline", "laion_filter", "--set", "scorer.model=ViT-Nope"], "unknown open_clip model 'ViT-Nope'"),
    (["--pipeline", "laion_filter", "--set", "scorer.model=ViT-B-32", "--set", "scorer.pretrained=nope"],
     "neither a file nor a known tag of ViT-B-32"),
])
def test_errors_are_one_line_and_nothing_is_written(tmp_path, capsys, args, expect):
    out = tmp_path / "out"
    assert run.main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert expect in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


def test_refuses_an_output_folder_holding_a_run(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(run.UsageError, match="already holds a run"):
        run.prepare_output(str(tmp_path), overwrite=False)
    (tmp_path / "mine.txt").write_text("keep me")
    run.prepare_output(str(tmp_path), overwrite=True)
    assert (tmp_path / "mine.txt").exists() and not (tmp_path / "report.json").exists()
    assert (tmp_path / "decisions").is_dir()


def test_unreachable_weights_stop_before_any_work(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--output",
                        str(tmp_path / "out"), "--set", "scorer.model=ViT-B-32",
                        "--set", "scorer.pretrained=laion2b_s34b_b79k"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2
    assert "cannot fetch weights 'laion2b_s34b_b79k' for ViT-B-32" in p.stderr
    assert "scorer.pretrained=/path/to/checkpoint" in p.stderr
    assert not (tmp_path / "out").exists()


def test_output_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run.main(["--pipeline", "laion_filter", "--output", str(blocker / "out")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


def light_cli(*args, cwd=None):
    """The CLI in a subprocess that prints, after it ends, which heavy modules it imported."""
    code = ("import sys; from curate import run; rc = run.main(sys.argv[1:]); "
            "print(sorted(m for m in ('apache_beam', 'torch', 'open_clip') if m in sys.modules)); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          check=False)


# Mistakes in the command or the config: each stops the run with one line, before any work.
COMMAND_ERRORS = [
    (["--set", "select.clip_threshold=.nan"], "select.clip_threshold must be a number >= -1 and <= 1, got nan"),
    (["--set", "select.clip_threshold=nan"], "select.clip_threshold must be a number"),
    (["--set", "shards={samples_per_shard: 10}"], ("shards is a section, not a key; set its keys one by one: "
                                                    "shards.samples_per_shard")),
    (["--set", "select.mode=language", "--set", "select.language_thresholds={en: 0.3}"], "with a 'default' entry"),
    (["--set", "filters.min_size=3"], "unknown key 'filters.min_size'"),
    (["--input", "/data/shards", "--set", "scores=/data/scored"], "input and scores both name what to curate"),
    (["--input", "/nonexistent/shards"], "input '/nonexistent/shards' does not exist"),  # a trial waited 8 s for it
    (["--overwrite-also", "raw"], "--overwrite-also names what --overwrite may remove besides; pass --overwrite too"),
    (["--overwrite", "--overwrite-also", "shardz"], "--overwrite-also takes names that curate writes"),
]


@pytest.mark.parametrize("args,expect", COMMAND_ERRORS)
def test_command_errors_come_before_beam_and_torch_are_imported(tmp_path, args, expect):
    out = tmp_path / "out"
    p = light_cli("--pipeline", "laion_filter", *args, "--output", str(out))
    assert p.returncode == 2
    assert expect in p.stderr and p.stderr.count("\n") == 1 and p.stderr.startswith("error: ")
    assert p.stdout.strip() == "[]"  # neither apache_beam nor torch nor open_clip
    assert not out.exists()


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _s, names in os.walk(folder) for n in names}


@pytest.mark.parametrize("args,expect", COMMAND_ERRORS)
def test_a_failed_command_leaves_a_folder_holding_a_run_as_it_was(tmp_path, capsys, args, expect):
    """Item 9 of issue 13: the failed run must not take the folder over (the corrected command would
    then be refused as 'other settings')."""
    out = tmp_path / "out"
    (out / "decisions").mkdir(parents=True)
    (out / "decisions" / "00000.parquet").write_bytes(b"rows")
    (out / "report.json").write_text("{}")
    (out / run.RUN_MARKER).write_text('{"config":{},"pipeline":"laion_filter"}')
    before = _snapshot(out)
    assert run.main(["--pipeline", "laion_filter", *args, "--output", str(out)]) == 2
    assert expect in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize("output", ["", " ", "output="])
def test_an_empty_output_is_refused(tmp_path, output):
    args = ["--set", output] if output.startswith("output=") else ["--output", output]
    p = cli("--pipeline", "laion_filter", *args, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: --output is empty: it would write into the current folder; name a folder, "
                                "e.g. --output curate-out/laion_filter")
    assert os.listdir(tmp_path) == []


def _run_id(pipeline, **config):
    return json.dumps({"config": config, "pipeline": pipeline}).encode()


def _folder(root, owner, names):
    """An output folder as a run of ``owner`` left it: each name a folder holding one file (or a file)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if "." in name:
            (root / name).write_text("{}")
        else:
            (root / name).mkdir()
            (root / name / "00000.tar").write_bytes(name.encode())
    (root / run.RUN_MARKER).write_bytes(_run_id(owner, setting=1))
    return root


def test_rerunning_an_identical_run_resumes_or_says_it_had_completed(tmp_path):
    writes = PIPELINES["laion_filter"].outputs
    same = _run_id("laion_filter", setting=1)
    assert run.prepare_output(str(tmp_path / "new"), False, same, writes) == run.NEW
    out = _folder(tmp_path / "out", "laion_filter", ["shards", "decisions"])
    (out / "shards" / ".00001.tar.tmp-0123abcd").write_bytes(b"half")
    assert run.prepare_output(str(out), False, same, writes) == run.RESUME
    assert not (out / "shards" / ".00001.tar.tmp-0123abcd").exists() and (out / "shards" / "00000.tar").exists()
    (out / "report.json").write_text("{}")
    assert run.prepare_output(str(out), False, same, writes) == run.RERUN
    assert (out / "report.json").exists()


def test_overwrite_removes_only_what_this_pipeline_writes(tmp_path):
    out = _folder(tmp_path / "out", "laion_filter", ["shards", "embeddings", "exports", "decisions", "report.json"])
    (out / "raw").mkdir()  # written by no laion_filter run that reads shards
    (out / "contrastive").mkdir()  # an export's folder
    (out / "mine.txt").write_text("keep me")
    writes = tuple(n for n in PIPELINES["laion_filter"].outputs if n != "raw")
    with pytest.raises(run.UsageError, match=r"already holds a laion_filter run with other settings \(embeddings, "
                                             r"shards, exports, decisions, report.json\); pass --overwrite"):
        run.prepare_output(str(out), False, _run_id("laion_filter", setting=2), writes)
    assert run.prepare_output(str(out), True, _run_id("laion_filter", setting=2), writes) == run.NEW
    assert sorted(os.listdir(out)) == [run.RUN_MARKER, "contrastive", "decisions", "mine.txt", "raw"]
    assert os.listdir(out / "decisions") == []


@pytest.mark.parametrize("reads", [{"input": "{out}/shards"}, {"input": "{out}/shards/*.tar"}, {"scores": "{out}"},
                                   {"decontaminate.eval_set": "{out}/embeddings/img_emb"}])
def test_overwrite_never_removes_what_the_run_reads(tmp_path, reads):
    out = _folder(tmp_path / "out", "laion_filter", ["shards", "embeddings", "decisions", "report.json"])
    before = _snapshot(out)
    reads = {k: v.format(out=out) for k, v in reads.items()}
    with pytest.raises(run.UsageError, match="which this run reads .*--overwrite would replace it: choose another "
                                             f"folder, e.g. --output {re.escape(str(out))}-2$"):
        run.prepare_output(str(out), True, _run_id("laion_filter", setting=2), PIPELINES["laion_filter"].outputs, reads)
    assert _snapshot(out) == before


def test_overwrite_leaves_another_pipelines_run_unless_named(tmp_path):
    out = _folder(tmp_path / "out", "ingest", ["raw", "decisions", "report.json"])
    before = _snapshot(out)
    writes, run_id = tuple(n for n in PIPELINES["laion_filter"].outputs if n != "raw"), _run_id("laion_filter")
    for overwrite in (False, True):
        with pytest.raises(run.UsageError) as e:
            run.prepare_output(str(out), overwrite, run_id, writes, {"input": str(out / "raw")})
        assert str(e.value) == (f"output folder {str(out)!r} holds an ingest run (decisions, report.json); --overwrite "
                                f"replaces only an earlier laion_filter run: choose another folder, e.g. --output "
                                f"{out}-2, or pass --overwrite --overwrite-also decisions,report.json to replace what "
                                f"the ingest run wrote there")
        assert _snapshot(out) == before
    run.prepare_output(str(out), True, run_id, writes, {"input": str(out / "raw")}, also=("decisions", "report.json"))
    assert sorted(os.listdir(out)) == [run.RUN_MARKER, "decisions", "raw"]
    assert (out / "raw" / "00000.tar").read_bytes() == b"raw"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A real ingest run (8 URLs from a local server) in its own output folder."""
    root = tmp_path_factory.mktemp("ingested")
    with FaultServer() as server:
        rows = [{"url": f"{server.base}/img/{i}.jpg", "caption": image_caption(i)} for i in range(8)]
        (root / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        run.run(["--pipeline", "ingest", "--input", str(root / "urls.jsonl"), "--output", str(root / "x"),
                 "--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.samples_per_shard=4"])
    return root / "x"


def test_curating_an_ingest_run_in_its_own_folder_keeps_its_raw_shards(ingested, capsys):
    """Issue 13 item 1: `ingest --output X`, then `laion_filter --input X/raw --output X --overwrite` deleted
    X/raw and crashed. Now it is refused with a safe command, and that command keeps X/raw."""
    raw = _snapshot(ingested / "raw")
    args = ["--pipeline", "laion_filter", "--input", str(ingested / "raw"), "--output", str(ingested),
            "--set", "filters.min_image_size=64"]
    assert run.main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds an ingest run" in err and len(err.splitlines()) == 1
    assert _snapshot(ingested / "raw") == raw
    suggested = re.search(r"pass (--overwrite --overwrite-also \S+) to replace", err).group(1).split()
    report = run.run([*args, *suggested])
    assert report["counts"]["input"] == 8
    assert _snapshot(ingested / "raw") == raw
    assert json.loads((ingested / run.RUN_MARKER).read_text())["pipeline"] == "laion_filter"


def test_laion_filter_on_a_url_table_owns_the_raw_shards_it_downloads(tmp_path):
    """Given a URL table, laion_filter ingests into OUT/raw first: --overwrite then removes that raw/
    too (a changed table must not meet old downloads), and keeps it for a run that reads it."""
    out = tmp_path / "y"
    with FaultServer() as server:
        rows = [{"url": f"{server.base}/img/{i}.jpg", "caption": image_caption(i)} for i in range(4)]
        (tmp_path / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        args = ["--pipeline", "laion_filter", "--input", str(tmp_path / "urls.jsonl"), "--output", str(out),
                "--set", "ingest.allow_networks=127.0.0.0/8", "--set", "filters.min_image_size=64"]
        run.run(args)
        assert sum(server.hits.values()) == 4
        run.run([*args, "--set", "select.clip_threshold=0.1", "--overwrite"])
        assert sum(server.hits.values()) == 8  # raw/ was this pipeline's output: removed, downloaded again
    raw = _snapshot(out / "raw")
    report = run.run(["--pipeline", "laion_filter", "--input", str(out / "raw"), "--output", str(out),
                      "--set", "filters.min_image_size=64", "--overwrite"])
    assert report["counts"]["input"] == 4 and _snapshot(out / "raw") == raw


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A laion_filter run on a small built-in corpus."""
    out = tmp_path_factory.mktemp("curated") / "out"
    run.run(["--pipeline", "laion_filter", "--output", str(out), "--set", "sample_corpus.samples=40"])
    return out


@pytest.mark.parametrize("args,expect", [
    (["--pipeline", "export", "--input", "{out}/shards", "--set", "formats=[contrastive]"],
     "holds a laion_filter run (decisions, report.json, report.html); --overwrite replaces only an earlier export run"),
    (["--pipeline", "export", "--input", "{out}/shards", "--set", "formats=[flava]"],
     "holds decisions, which this run reads (flava.run_dir={out})"),
    (["--pipeline", "laion_filter", "--input", "{out}/shards"], "holds shards, which this run reads (input={out}/shards)"),
    (["--pipeline", "laion_filter", "--set", "scores={out}"], "holds embeddings, which this run reads (scores={out})"),
])
def test_overwrite_into_a_laion_filter_folder_keeps_its_outputs(curated, capsys, args, expect):
    """Issue 13 item 1: export into a laion_filter folder with --overwrite deleted its shards and embeddings."""
    before = _snapshot(curated)
    args = [a.format(out=curated) for a in args]
    assert run.main([*args, "--output", str(curated), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert expect.format(out=curated) in err and f"choose another folder, e.g. --output {curated}-2" in err
    assert len(err.splitlines()) == 1
    assert _snapshot(curated) == before


def test_ctrl_c_prints_one_line_and_the_rerun_resumes(tmp_path):
    """Issue 13 item 13: Ctrl-C printed about 200 lines of Beam traceback; rerunning a completed run
    said 'resuming the interrupted run'."""
    synth.generate(str(tmp_path / "corpus"), 200, seed=3, noise=0.3)
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input", str(tmp_path / "corpus"),
               "--output", str(out), "--set", "scorer.batch_size=8"]
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 240
        while "reading shard" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    err = log.read_text()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"interrupted: the laion_filter run in {out} stopped before it finished; run the "
                                    "same command to resume it (what was written is kept, the rest is redone)")
    assert not (out / "report.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run" in resumed.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" not in again.stderr
    assert f"rerunning a completed run in {out}: outputs are rewritten with the same bytes" in again.stderr
    def strict(constant):
        raise AssertionError(f"not JSON: {constant}")

    for name in ("report.json", run.RUN_MARKER):  # no bare NaN or Infinity
        json.loads((out / name).read_text(), parse_constant=strict)


def test_ctrl_c_with_local_worker_processes_prints_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the worker processes too; their tracebacks must not show."""
    synth.generate(str(tmp_path / "corpus"), 400, seed=4, noise=0.3, shard_size=100)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input",
                             str(tmp_path / "corpus"), "--output", str(out), "--set", "scorer.batch_size=8",
                             "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not any(names for _d, _s, names in os.walk(out / "embeddings")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"interrupted: the laion_filter run in {out}")
    assert not (out / ".worker_options.json").exists()  # the workers' options go with the run (a trial found it left)


def test_a_sample_corpus_folder_curate_did_not_write_is_never_deleted(tmp_path):
    """A trial found a user's OUT/sample_corpus/ replaced by the generated corpus, without --overwrite."""
    mine = tmp_path / "sample_corpus" / "my_data.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    with pytest.raises(run.UsageError, match="not curate's built-in sample corpus"):
        run.run(["--pipeline", "laion_filter", "--output", str(tmp_path), "--set", "sample_corpus.samples=20"])
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["sample_corpus"]


def test_an_eval_set_without_images_is_refused_before_any_work(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "notes.txt").write_text("no images here")
    with pytest.raises(Exception, match="holds no img_emb/.*and no image files"):
        run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "out"), "--set", "sample_corpus.samples=20",
                 "--set", f"decontaminate.eval_set={tmp_path / 'eval'}"])
    assert not (tmp_path / "out").exists()


def test_a_folder_whose_input_shards_changed_is_refused_not_mixed(tmp_path, capsys):
    """A tar removed from the input between two runs into one folder: the old run's per-shard outputs
    would mix with the new ones (counts of 3 shards, 2 read). The rerun is refused with one line that
    names --overwrite; with it, the run starts over."""
    corpus = tmp_path / "corpus"
    synth.generate(str(corpus), 60, seed=8, noise=0.3, shard_size=20)
    args = ["--pipeline", "laion_filter", "--input", str(corpus), "--output", str(tmp_path / "out"),
            "--set", "save_embeddings=false", "--set", "dedup.near=false"]
    assert run.main(args) == 0
    for name in os.listdir(corpus):
        if name.startswith("00002."):
            os.remove(corpus / name)
    capsys.readouterr()
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "over other input shards (3 shards then, 2 shards now); pass --overwrite" in err
    assert run.main([*args, "--overwrite"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["input"] == 40 and not report["counts"]["conservation"]["problems"]
    assert sorted(os.listdir(tmp_path / "out" / "decisions")) == ["00000.parquet", "00001.parquet"]
