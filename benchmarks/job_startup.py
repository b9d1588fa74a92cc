"""What a new process pays before its first neighbours and UMAP, with and without numba's cache.

Every ``schelix`` command and every background job of the app is a new process. This times,
in fresh processes one after the other, the same work: import scanpy, find the 15 nearest
neighbours of ``--cells`` cells (pynndescent above 4,096) and draw their UMAP.

- ``plain``: the libraries as they come (numba compiles their functions in every process);
- ``cache, first``: :func:`schelix.jit_cache.enable` with an empty cache (compiles and writes);
- ``cache, later``: the same again, as every later process on the machine (reads the cache).

The cache goes to a temporary ``NUMBA_CACHE_DIR``, so the machine's own cache is not used. It
prints the seconds of each and the ratio of ``cache, later`` to ``plain``. Run it alone: two
cores are easily disturbed.

    python benchmarks/job_startup.py --cells 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

_WORK = """
import sys, time
t0 = time.perf_counter()
if sys.argv[1] == "cache":
    from schelix import jit_cache
    jit_cache.enable()
import numpy as np, anndata as ad, scanpy as sc
x = np.random.default_rng(0).normal(size=(int(sys.argv[2]), 30)).astype("float32")
a = ad.AnnData(x)
a.obsm["X_pca"] = x
sc.pp.neighbors(a, use_rep="X_pca", n_neighbors=15)
sc.tl.umap(a, random_state=0)
print(time.perf_counter() - t0)
"""


def _once(mode: str, cells: int, cache_dir: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", _WORK, mode, str(cells)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    plain, first, later = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            plain.append(_once("plain", args.cells, cache))
            first.append(_once("cache", args.cells, cache))
            later.append(_once("cache", args.cells, cache))
    for name, times in (("plain", plain), ("cache, first", first), ("cache, later", later)):
        print(f"{name:13s} " + " ".join(f"{t:6.1f} s" for t in times))
    ratio = statistics.median(later) / statistics.median(plain)
    print(f"a later process takes {ratio:.2f} x the time of a plain one ({args.cells:,} cells)")


if __name__ == "__main__":
    main()
