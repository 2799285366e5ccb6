"""Beyond one process: multi-process direct runner, a real two-worker Dask cluster, remote paths
through fsspec, and a Dataflow job built offline (issue: the same pipelines on other runners)."""
import glob
import os
import socket
import subprocess
import sys
import tarfile
import time

import fsspec
import pyarrow.parquet as pq
import pytest

from curate import fs, run, synth

SAMPLES, PER_SHARD = 240, 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, SAMPLES, seed=13, noise=0.4, shard_size=80)
    return out


def laion_filter(corpus, out, *extra):
    return run.run(["--pipeline", "laion_filter", "--input", corpus, "--output", out,
                    "--set", f"shards.samples_per_shard={PER_SHARD}", *extra])


@pytest.fixture(scope="module")
def direct(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("direct"))
    return out, laion_filter(corpus, out)


def output_bytes(out: str) -> dict[str, bytes]:
    """Every output file of a run (not report.json: it holds wall times and the runner's name)."""
    files = {}
    for sub in ("shards", "decisions", "embeddings"):
        for path in fs.walk_files(fs.join(out, sub)):
            files[f"{sub}/{path.split(f'/{sub}/', 1)[1]}"] = fs.read_bytes(path)
    return files


def test_dask_cluster_run_equals_direct_run(corpus, direct, tmp_path):
    """laion_filter on Beam's DaskRunner, on a local scheduler with two worker processes."""
    distributed = pytest.importorskip("distributed")
    direct_out, direct_report = direct
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        report = laion_filter(corpus, str(tmp_path), "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                              f"--dask_client_address={cluster.scheduler_address}")
    assert report["runner"].endswith("DaskRunner")
    assert report["counts"] == direct_report["counts"] and report["counts"]["input"] == SAMPLES
    got, want = output_bytes(str(tmp_path)), output_bytes(direct_out)
    assert sorted(got) == sorted(want) and any(name.startswith("shards/") for name in got)
    assert [name for name in want if got[name] != want[name]] == []


# Every two-pass step at once: clustered near dedup (centroids as a side input, components in rounds),
# SemDeDup's target fraction, the top-fraction cut and metadata balancing (combiner counts as a side
# input). About 3.5 minutes on 2 cores, so it runs with `python -m pytest -m slow` (README "Tests"),
# not in the default suite.
TWO_PASS = ("--set", "dedup.near_flat_max=20", "--set", "dedup.semdedup.enabled=true",
            "--set", "dedup.semdedup.target_fraction=0.8", "--set", "select.mode=fraction",
            "--set", "balance.enabled=true", "--set", "balance.cap=10")


@pytest.mark.slow
def test_every_two_pass_step_on_a_dask_cluster_equals_direct_run(corpus, tmp_path):
    """The run that found Beam 2.77's DaskRunner delivering some samples twice to the top-fraction
    histogram (the cut moved; now each sample counts once by its input position)."""
    distributed = pytest.importorskip("distributed")
    direct_out = str(tmp_path / "direct")
    direct_report = laion_filter(corpus, direct_out, *TWO_PASS)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        report = laion_filter(corpus, str(tmp_path / "dask"), *TWO_PASS,
                              "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                              f"--dask_client_address={cluster.scheduler_address}")
    assert report["counts"] == direct_report["counts"]
    got, want = output_bytes(str(tmp_path / "dask")), output_bytes(direct_out)
    assert sorted(got) == sorted(want) and [name for name in want if got[name] != want[name]] == []


# The score pipeline with two worker processes: its writer (ScoreShards) is laion_filter's, whose
# two-worker run is compared byte for byte, embeddings included, in tests/test_laion_filter.py.


def test_remote_paths_through_fsspec(corpus, direct):
    """Input and output on fsspec's in-memory filesystem: nothing may assume a local path."""
    direct_out, direct_report = direct
    memory = fsspec.filesystem("memory")
    for path in sorted(glob.glob(os.path.join(corpus, "*"))):
        memory.pipe(f"/corpus/{os.path.basename(path)}", open(path, "rb").read())
    try:
        report = laion_filter("memory://corpus", "memory://out")
        assert report["counts"] == direct_report["counts"]
        got, want = output_bytes("memory://out"), output_bytes(direct_out)
        assert sorted(got) == sorted(want)
        # Curated tars and sizes.json name no input path: identical bytes.
        for name in want:
            if name.endswith((".tar", "sizes.json", ".npy")):
                assert got[name] == want[name], name
        # Decision rows name the input shard by its path; otherwise identical.
        for name in (n for n in want if n.startswith("decisions/")):
            a = pq.read_table(fsspec.open(f"memory://out/{name}").open()).to_pylist()
            b = pq.read_table(os.path.join(direct_out, name)).to_pylist()
            strip = lambda rows: [{**r, "source_shard": os.path.basename(r["source_shard"] or "")} for r in rows]  # noqa: E731
            assert strip(a) == strip(b)
        assert not [p for p in fs.walk_files("memory://out") if ".tmp-" in p]
        # A rerun of the same command resumes on the remote folder too.
        assert laion_filter("memory://corpus", "memory://out")["counts"] == direct_report["counts"]
    finally:
        for root in ("/corpus", "/out"):
            if memory.exists(root):
                memory.rm(root, recursive=True)


def test_interrupted_remote_write_leaves_no_file():
    try:
        with fs.atomic_write("memory://atomic/x.tar") as f:
            f.write(b"half a tar")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not fs.exists("memory://atomic/x.tar") and fs.walk_files("memory://atomic") == []


DATAFLOW = ["--runner=DataflowRunner", "--project=curate-offline-check", "--region=us-central1",
            "--temp_location=gs://curate-offline-check/tmp", "--dry_run=True",
            "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
            "--machine_type=g2-standard-8"]


def test_dataflow_job_builds_and_validates_offline(corpus, tmp_path):
    """DataflowRunner with --dry_run=True builds and validates the job request, without credentials
    or network, and stops before submitting it (Beam's own Dataflow tests use the same switch)."""
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient")
    setup = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    result = laion_filter(corpus, str(tmp_path / "out"), *DATAFLOW, f"--setup_file={setup}",
                          "--set", "scorer.device=cuda")
    assert result["dry_run"] and result["state"] == "DONE"
    job = result["job"]
    # The job request's environment as the runner would send it (built here from the same options).
    from apache_beam.runners.dataflow.internal import apiclient
    env = apiclient.Environment([], job.options, "8", "gs://curate-offline-check/tmp/pipeline.pb",
                                job.proto_pipeline).proto
    assert list(env.service_options) == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert [w.machine_type for w in env.worker_pools] == ["g2-standard-8"]
    # Workers install the package the stager built from pyproject.toml (--setup_file).
    staged = {bytes(a.role_payload) for e in job.proto_pipeline.components.environments.values()
              for a in e.dependencies}
    assert any(b"workflow.tar.gz" in p for p in staged)
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"LaionFilter/ScoreRawShards", "LaionFilter/Deduplicate", "LaionFilter/WriteCuratedShards"} <= names
    assert not os.path.exists(tmp_path / "out")  # a dry run writes nothing


def test_package_builds_for_dataflow_workers(tmp_path):
    """What --setup_file makes Dataflow workers install: Beam's stager builds an sdist from
    pyproject.toml (offline, no build isolation); it must hold every package and the data files."""
    from apache_beam.runners.portability.stager import Stager

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sdist = Stager._build_setup_package(os.path.join(root, "pyproject.toml"), str(tmp_path))
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("curate/run.py", "curate/fs.py", "pipelines/laion_filter.py", "filters/dedup.py",
                   "configs/laion_filter.yaml", "curate/models/demo_scorer.pt", "curate/models/curate-demo-64.json"):
        assert needed in names, needed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_portable_job_endpoint_equals_direct_run(corpus, direct, tmp_path):
    """PortableRunner against a job service on 127.0.0.1: the same Job API that a Flink or Spark job
    server exposes (--job_endpoint), here served by Beam's own local job service."""
    direct_out, direct_report = direct
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        report = laion_filter(corpus, str(tmp_path), "--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{port}",
                              "--environment_type=LOOPBACK")
    finally:
        service.terminate()
        service.wait(timeout=30)
    assert report["runner"] == "PortableRunner" and report["counts"] == direct_report["counts"]
    assert output_bytes(str(tmp_path)) == output_bytes(direct_out)


def test_runner_options_pass_through_unchanged():
    """Flags the CLI does not know are Beam's: Spark's and Flink's reach their option views as given."""
    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions,
        PortableOptions,
        SparkRunnerOptions,
    )

    _, beam_args = run.parse_args(["--pipeline", "laion_filter", "--runner=FlinkRunner",
                                   "--flink_master=flink-jm:8081", "--flink_job_server_jar=/jars/flink-js.jar",
                                   "--spark_master_url=spark://sm:7077", "--environment_type=DOCKER",
                                   "--parallelism=64"])
    options = run.beam_options(beam_args)
    flink = options.view_as(FlinkRunnerOptions)
    assert (flink.flink_master, flink.flink_job_server_jar, flink.parallelism) == (
        "flink-jm:8081", "/jars/flink-js.jar", 64)
    assert options.view_as(SparkRunnerOptions).spark_master_url == "spark://sm:7077"
    assert options.view_as(PortableOptions).environment_type == "DOCKER"
