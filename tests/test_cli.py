"""The command line: help, and one-line errors before any work is done."""
import os
import subprocess
import sys

import pytest

from curate import run


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
    (["--pipeline", "laion_filter", "--input", "/nonexistent/shards"], "no .tar, .tar.gz or .tgz shards found"),
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
