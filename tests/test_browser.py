"""The real app in a real browser: ``streamlit run app.py`` driven by headless Chromium.

Demo data -> QC -> anchor split (a slider moved, the counts follow) -> a short training run ->
trajectory -> metrics -> export, then the downloaded ``.h5ad`` is re-opened; then a new sample
(cells of the export under new names) is mapped onto the training ("Map new data"). A screenshot of
every page goes to ``tests/artifacts/``. Skipped when Chromium or Playwright is missing
(install: ``apt-get install -y chromium`` and ``pip install playwright``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")
LONG = 420_000  # ms: scoring, training and the peers run on 2 CPU cores in CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "SCHELIX_WORKSPACE_ROOT": str(tmp_path_factory.mktemp("workspaces"))}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _settle(page, timeout: float = LONG / 1000) -> None:
    """Wait until Streamlit has finished the current run (no "Running…" for a second)."""
    quiet, end = 0, time.time() + timeout
    while quiet < 4 and time.time() < end:
        page.wait_for_timeout(250)
        busy = page.locator('[data-testid="stStatusWidget"]').count() > 0
        quiet = 0 if busy else quiet + 1


def _shot(page, name: str) -> None:
    _settle(page)
    page.mouse.move(0, 0)  # no tooltip in the picture
    page.evaluate("document.activeElement && document.activeElement.blur()")
    text = page.inner_text("body")
    assert "Traceback" not in text and "This app has encountered an error" not in text, text[:2000]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _goto(page, server: str, path: str, ws: str, heading: str) -> None:
    page.goto(f"{server}/{path}?ws={ws}")  # a fresh session: the workspace comes from the URL
    page.get_by_role("heading", name=re.compile(heading)).wait_for(timeout=LONG)
    _settle(page)


def _metric(page, label: str) -> int:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return int(box.locator('[data-testid="stMetricValue"]').inner_text().replace(",", ""))


def test_full_workflow_in_a_browser(server: str, page, tmp_path: Path) -> None:
    page.goto(server)
    page.get_by_role("heading", name=re.compile("scHelix Studio")).wait_for()
    _shot(page, "01_home")
    page.get_by_role("button", name="Use the demo data").click()
    page.get_by_role("heading", name=re.compile("Your data")).wait_for(timeout=LONG)
    _settle(page)
    ws = re.search(r"[?&]ws=([A-Za-z0-9_-]+)", page.url).group(1)
    page.get_by_text("2,000").first.wait_for()  # the demo's cells, in the summary
    _shot(page, "02_data")

    _goto(page, server, "QC", ws, "Quality control")
    # the demo takes the same adaptive per-batch defaults as any upload (no special case)
    page.get_by_text("Adaptive, per batch (default)").wait_for(timeout=LONG)
    assert page.get_by_role("spinbutton", name="Max mitochondrial %", exact=True).count() == 0
    page.locator('[data-testid="stDataFrame"]').first.wait_for()  # the per-batch QC summary
    page.get_by_role("button", name="Apply").click()
    page.get_by_text(re.compile("Applied: .* cells")).wait_for(timeout=LONG)
    _shot(page, "03_qc")

    _goto(page, server, "Anchor_genes", ws, "Anchor genes")
    page.get_by_role("button", name="Score the genes").click()
    page.locator('[data-testid="stMetric"]', has_text="Anchors").wait_for(timeout=LONG)
    _settle(page)
    before = _metric(page, "Anchors")
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(8):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('[data-testid="stMetric"]')]
            .some(m => m.innerText.includes('Anchors') && !m.innerText.includes('{before}'))""",
        timeout=30_000,
    )
    _settle(page)
    after = _metric(page, "Anchors")
    assert after < before and after + _metric(page, "Variants") == _metric(page, "HVGs scored")
    _shot(page, "04_anchor_genes")
    page.get_by_role("button", name="Use this split for training").click()
    page.get_by_text("Split in use").wait_for(timeout=LONG)

    _goto(page, server, "Train", ws, "Train scHelix")
    for label, value in (("Training steps", "30"), ("Warm-up steps", "10"), ("Batch size", "64")):
        page.get_by_role("spinbutton", name=label, exact=True).fill(value)
    page.get_by_text(re.compile("^Advanced: every scHelix setting")).click()
    page.get_by_role("spinbutton", name="snapshot_every", exact=True).fill("15")
    page.keyboard.press("Tab")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile("Training finished")).wait_for(timeout=LONG)
    _shot(page, "05_train")

    _goto(page, server, "Trajectory", ws, "Trajectory")
    page.locator(".js-plotly-plot").first.wait_for(timeout=LONG)
    _shot(page, "06_trajectory")

    _goto(page, server, "Metrics", ws, "Metrics")
    page.get_by_role("button", name="Run and score").click()
    page.get_by_role("heading", name="scib-metrics benchmark").wait_for(timeout=LONG)
    _shot(page, "07_metrics")

    _goto(page, server, "Export", ws, "Export")
    page.get_by_role("button", name="Prepare the export files").click()
    page.get_by_text("Your files are ready").wait_for(timeout=LONG)
    page.get_by_text("Open the .h5ad with").wait_for(timeout=LONG)  # the whole list is drawn
    _shot(page, "08_export")
    with page.expect_download(timeout=LONG) as dl:
        page.get_by_role("button", name=re.compile("schelix_integrated.h5ad")).click()
    target = tmp_path / "integrated.h5ad"
    dl.value.save_as(target)
    back = ad.read_h5ad(target)
    assert back.obsm["X_umap"].shape == (back.n_obs, 2) and "X_schelix" in back.obsm
    assert set(back.var["schelix_stream"].astype(str)) == {"anchor", "variant", "unused"}
    assert "versions" in back.uns["schelix"]["export"]

    # Map new data: cells of one batch under new names, as a new sample, onto this training
    batch_col = next(c for c in ("tech", "batch", "sample") if c in back.obs)
    first = back.obs[batch_col].astype(str).iloc[0]
    query = back[back.obs[batch_col].astype(str) == first][:300].copy()
    query.obs_names = [f"new_{i}" for i in range(query.n_obs)]
    query = ad.AnnData(query.layers["counts"], obs=query.obs[["cell_type"]].copy(),
                       var=query.var[[]].copy())  # fmt: skip
    query.write_h5ad(tmp_path / "query.h5ad")
    _goto(page, server, "Map", ws, "Map new data")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        str(tmp_path / "query.h5ad")
    )
    page.get_by_role("button", name="Map the query").wait_for(timeout=LONG)
    _settle(page)
    page.get_by_role("spinbutton", name="Adaptation steps", exact=True).fill("20")
    page.keyboard.press("Tab")
    page.get_by_role("button", name="Map the query").click()
    page.get_by_text(re.compile(r"Mapped \d+ query cells")).wait_for(timeout=LONG)
    page.get_by_role("heading", name="How sure is each transferred label?").wait_for(timeout=LONG)
    _shot(page, "09_map")
    assert page.locator(".js-plotly-plot").count() == 3
    with page.expect_download(timeout=LONG) as dl:
        page.get_by_role("button", name=re.compile("Reference \\+ query")).click()
    dl.value.save_as(tmp_path / "mapped.h5ad")
    mapped = ad.read_h5ad(tmp_path / "mapped.h5ad")
    assert 250 <= (mapped.obs["schelix_origin"] == "query").sum() <= 300  # after QC
    assert "cell_type_transferred" in mapped.obs
