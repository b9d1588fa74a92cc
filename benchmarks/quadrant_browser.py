"""The quadrant's slider latency in a real browser, against Streamlit's own round trip.

Starts the app on the demo data (as ``tests/test_browser.py`` does: demo, QC applied, genes
scored) and runs that test's ``_quadrant_latency`` measurement ``--rounds`` times: ten single
key presses, each timed until the chart's canvas has redrawn the moved line, then fourteen
quick presses. The peer, measured in the same run and the same browser: a bare Streamlit page
(one slider, one line of text), each press timed until the text has changed, which is the
floor any Streamlit widget pays (the key event, the websocket round trip, the script rerun and
the redraw). Prints each round's medians, their ratio, and the quadrant's target (a median
under 250 ms), with the load average.

    python benchmarks/quadrant_browser.py [--rounds 3]

Run it alone: two shared cores make any other work part of the figure.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

TARGET_S = 0.25  # the quadrant's median press-to-redraw target
BARE_APP = """import streamlit as st
value = st.slider("threshold", 0, 100, 50)
st.markdown(f"value {value}")
"""


def bare_round_trip(page, url: str, presses: int = 10) -> list[float]:
    """Seconds from each key press on the bare page's slider until its text shows the value."""
    page.goto(url)
    page.get_by_text("value 50").wait_for(timeout=60_000)
    page.get_by_role("slider").first.focus()
    times, value = [], 50
    for i in range(presses):
        key, value = ("ArrowLeft", value - 1) if i % 2 == 0 else ("ArrowRight", value + 1)
        t0 = time.perf_counter()
        page.keyboard.press(key)
        page.wait_for_function(
            "(want) => document.body.innerText.includes(want)",
            arg=f"value {value}", timeout=30_000, polling="raf",
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
        page.wait_for_timeout(150)
    return times


def open_quadrant(page, url: str) -> None:
    """The demo, QC applied, the genes scored: the anchor page with its quadrant drawn."""
    import test_browser as tb

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
    page.locator('[data-testid="stMetric"]', has_text="Anchors").wait_for(timeout=tb.LONG)
    tb._settle(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import app_server
    import test_browser as tb
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="schelix_bench_"))
    (tmp / "bare.py").write_text(BARE_APP)
    env = {**os.environ, "SCHELIX_WORKSPACE_ROOT": str(tmp / "workspaces")}
    app, app_url = app_server.start(env)
    bare, bare_url = app_server.start(env, script=tmp / "bare.py")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=tb.CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
            )  # fmt: skip
            quadrant = browser.new_page(viewport={"width": 1400, "height": 2200})
            quadrant.set_default_timeout(60_000)
            open_quadrant(quadrant, app_url)
            peer = browser.new_page(viewport={"width": 1400, "height": 2200})
            for r in range(args.rounds):  # alternate, so a slow spell hits both
                q = statistics.median(tb._quadrant_latency(quadrant)[0])
                tb._settle(quadrant)
                b = statistics.median(bare_round_trip(peer, bare_url))
                verdict = "met" if q < TARGET_S else "MISSED"
                print(
                    f"round {r + 1}: quadrant median {q * 1000:.0f} ms, bare Streamlit slider "
                    f"{b * 1000:.0f} ms, ratio {q / b:.2f}; target {TARGET_S * 1000:.0f} ms "
                    f"{verdict}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                    flush=True,
                )
            browser.close()
    finally:
        for proc in (app, bare):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
