"""docs/report.png, the README's picture of report.html: laion_filter on the built-in corpus (the
quick start's command), then the top of its page as headless Chromium draws it.

    python docs/report_screenshot.py [--output curate-out/report-screenshot] [--png docs/report.png]

Needs Debian's ``chromium`` (README "Seeing a run"). The PNG is reduced to 256 colours so it stays
well under 300 KB.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from PIL import Image

from curate import run

WIDTH, HEIGHT = 1280, 1900  # the header, funnel, drop reasons, languages and score histograms


def screenshot(page: str, png: str, width: int = WIDTH, height: int = HEIGHT) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as scratch:
        shot = os.path.join(scratch, "page.png")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--user-data-dir={scratch}/profile",
                        f"--window-size={width},{height}", f"--screenshot={shot}", "file://" + os.path.abspath(page)],
                       check=True, capture_output=True, timeout=120)
        Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(png, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="curate-out/report-screenshot", help="laion_filter's output folder")
    ap.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.png"))
    args = ap.parse_args(argv)
    status = run.main(["--pipeline", "laion_filter", "--output", args.output])
    if status:
        return status
    screenshot(os.path.join(args.output, "report.html"), args.png)
    print(f"{args.png}: {os.path.getsize(args.png):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
