"""How fast the anchor quadrant follows a threshold slider, on the demo data.

Measures (1) the time from a slider change to the end of the page rerun in Streamlit's AppTest
(the whole Anchor genes page: quadrant mask, figure, counts, gene table, gene profile), and
(2) the pure cost of ``schelix.anchors.quadrant`` plus building the page's Vega-Lite spec
(:func:`studio.quadrant.chart`) and Streamlit's turning it into the element it sends (the
datasets as Arrow, the spec as JSON). The browser side (slider key press -> lines
redrawn) is timed by the real-browser test (``tests/test_browser.py``, printed there).

    python benchmarks/quadrant.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _prepare(root: Path) -> str:
    """A workspace with the demo data preprocessed and scored (done once, not timed)."""
    from schelix import anchors, datasets, io, pp
    from studio.workspace import Workspace

    ws = Workspace.create(root=root, name="benchmark")
    adata = io.read(datasets.DEMO_PATH, batch_key=datasets.DEMO_BATCH_KEY)
    ws.save_adata("data", adata)
    ws.set_keys(batch_key=datasets.DEMO_BATCH_KEY, label_key=datasets.DEMO_LABEL_KEY)
    ws.mark_done("data")
    pre = pp.preprocess(adata, batch_key=datasets.DEMO_BATCH_KEY)
    ws.save_adata("qc", pre)
    ws.mark_done("qc")
    anchors.score_genes(pre, batch_key=datasets.DEMO_BATCH_KEY)
    pre.uns["schelix"]["app_qc_rev"] = ws.rev("qc")
    ws.save_adata("anchors", pre)
    return ws.id


def _marshal(spec: dict) -> None:
    """What ``st.vega_lite_chart`` does with a spec before sending it: Streamlit's own private
    steps as of 1.67, so a rename there breaks this benchmark (not the app)."""
    import json

    from streamlit.elements import vega_charts
    from streamlit.proto.VegaLiteChart_pb2 import VegaLiteChart

    proto = VegaLiteChart()
    spec = vega_charts._prepare_vega_lite_spec(spec, True)
    vega_charts._marshall_chart_data(proto, spec, None)
    proto.spec = vega_charts._stabilize_vega_json_spec(json.dumps(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="schelix_bench_"))
    os.environ["SCHELIX_WORKSPACE_ROOT"] = str(root)
    t0 = time.perf_counter()
    wid = _prepare(root)
    print(f"setup (preprocess + score the demo): {time.perf_counter() - t0:.1f} s")

    from streamlit.testing.v1 import AppTest

    from schelix import anchors
    from studio import quadrant
    from studio.workspace import Workspace

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["ws_id"] = wid
    at.run()
    at.switch_page("pages/anchor_genes.py").run()
    at.run()  # warm: the AnnData is cached after the first run
    assert not at.exception, [e.message for e in at.exception]
    values = [round(-1.0 + 2.0 * i / max(1, args.repeats - 1), 2) for i in range(args.repeats)]
    rerun = []
    for v in values:
        t = time.perf_counter()
        at.slider(key="tau_dom").set_value(v).run()
        rerun.append(time.perf_counter() - t)
        assert not at.exception
    counts = {m.label: m.value for m in at.metric}

    adata = Workspace.open(wid, root=root).load_adata("anchors")
    table = anchors.gene_table(adata)
    z_dom, z_str = table["z_dom"].to_numpy(), table["z_str"].to_numpy()
    n = 200
    t_mask = (
        timeit.timeit(lambda: anchors.quadrant(z_dom, z_str, tau_dom=-0.3, tau_str=0.2), number=n)
        / n
    )
    mask = anchors.quadrant(z_dom, z_str, tau_dom=-0.3, tau_str=0.2)
    t_fig = (
        timeit.timeit(lambda: quadrant.chart(table, mask, tau_dom=-0.3, tau_str=0.2), number=20)
        / 20
    )
    t_json = (
        timeit.timeit(
            lambda: _marshal(quadrant.chart(table, mask, tau_dom=-0.3, tau_str=0.2)), number=20
        )
        / 20
    )

    print(f"genes in the quadrant: {len(table)}; last counts: {counts}")
    print(
        f"slider change -> rerun complete (AppTest, {len(rerun)} moves): median "
        f"{1000 * statistics.median(rerun):.0f} ms, mean {1000 * statistics.mean(rerun):.0f} ms, "
        f"max {1000 * max(rerun):.0f} ms"
    )
    print(f"schelix.anchors.quadrant(): {1e6 * t_mask:.1f} µs")
    print(
        f"studio.quadrant.chart() build: {1000 * t_fig:.1f} ms; build and marshal as "
        f"st.vega_lite_chart does: {1000 * t_json:.1f} ms"
    )
    print(f"machine: {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
