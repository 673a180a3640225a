"""Make docs/report-predict.png and docs/report-evaluate.png: both reports, opened in headless Chromium.

    python docs/report_screenshots.py [--data DATA_DIR] [--split test]

The predict report covers the X-rays shipped with cxrseg; the evaluate report scores the bundled model on
DATA_DIR's split (default: the packaged sample, every pair). Needs the `test` extra (Playwright) and a
Chromium at /usr/bin/chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from cxrseg.assets import SAMPLE_DIR

DOCS = Path(__file__).resolve().parent
BUNDLED = SAMPLE_DIR.parent / "lung-unet.safetensors"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


def cxrseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cxrseg", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--split", default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out, review = Path(scratch) / "predictions", Path(scratch) / "evaluation" / "report.html"
        cxrseg("predict", "--sample", "--out", str(out), "--checkpoint", str(BUNDLED), "--report")
        cxrseg("evaluate", "--data", str(args.data), "--split", args.split, "--checkpoint", str(BUNDLED),
               "--report", str(review))  # fmt: skip
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto((out / "report.html").as_uri())
            page.select_option("#filter", "all")
            page.screenshot(path=str(DOCS / "report-predict.png"))
            page.goto(review.as_uri())
            page.wait_for_timeout(300)
            page.screenshot(path=str(DOCS / "report-evaluate.png"), full_page=False)
            browser.close()
    print(f"Wrote {DOCS / 'report-predict.png'} and {DOCS / 'report-evaluate.png'}")


if __name__ == "__main__":
    main()
