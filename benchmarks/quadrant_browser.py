"""The quadrant's slider latency in a real browser, without the rest of the browser test.

Starts the app on the demo data (as ``tests/test_browser.py`` does: demo, QC applied, genes
scored) and runs that test's ``_quadrant_latency`` measurement ``--rounds`` times: ten single
key presses, each timed until the chart's canvas has redrawn the moved line, then fourteen
quick presses. Prints the median per round and the load average.

    python benchmarks/quadrant_browser.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import app_server
    import test_browser as tb
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "SCHELIX_WORKSPACE_ROOT": tempfile.mkdtemp(prefix="schelix_bench_")}
    proc, url = app_server.start(env)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=tb.CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("button", name="Use the demo data").click()
            page.get_by_role("heading", name=re.compile("Your data")).wait_for(timeout=tb.LONG)
            tb._settle(page)
            ws = re.search(r"[?&]ws=([A-Za-z0-9_-]+)", page.url).group(1)
            tb._goto(page, url, "QC", ws, "Quality control")
            page.get_by_role("button", name="Apply").click()
            page.get_by_text(re.compile("Applied: .* cells")).wait_for(timeout=tb.LONG)
            tb._goto(page, url, "Anchor_genes", ws, "Anchor genes")
            page.get_by_role("button", name="Score the genes").click()
            anchors = page.locator('[data-testid="stMetric"]', has_text="Anchors")
            anchors.wait_for(timeout=tb.LONG)
            tb._settle(page)
            for _ in range(args.rounds):
                try:
                    tb._quadrant_latency(page)  # prints the median and the load
                except AssertionError as err:
                    print(f"over the test's bound: {str(err)[:200]}")
                tb._settle(page)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
