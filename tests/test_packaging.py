"""The installed distribution: nothing on sys.path under generic names, configs shipped as data."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_only_curate(tmp_path):
    """pipelines/, filters/ and configs/ are curate.pipelines, curate.filters, curate.configs."""
    # setuptools builds in the source tree (build/, *.egg-info): build a copy, leave the checkout alone
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "build", "*.egg-info", "__pycache__", "curate-out", "work-tmp", ".whl"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("curate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"curate"}
    for path in ("curate/pipelines/laion_filter.py", "curate/filters/dedup.py",
                 "curate/configs/laion_filter.yaml", "curate/configs/dataflow-requirements.txt",
                 "curate/models/demo_scorer.pt"):
        assert path in names
    # every module in the repository's package folders made it into the wheel
    for folder, package in (("pipelines", "curate/pipelines"), ("filters", "curate/filters"),
                            ("curate", "curate")):
        for module in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{module.relative_to(ROOT / folder).as_posix()}" in names, module
