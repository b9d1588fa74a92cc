"""numba's cache for pynndescent and umap-learn (schelix.jit_cache): a later process loads the
compiled code instead of compiling it, and numba is left as it was for everything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, numba, numpy as np
from schelix import jit_cache
done = jit_cache.enable(("pynndescent",))
again = jit_cache.enable(("pynndescent", "no_such_library_here"))
import pynndescent.distances as d
d.euclidean(np.zeros(3, np.float32), np.ones(3, np.float32))
own = numba.njit(lambda x: x + 1)
own(1)
print(json.dumps({
    "done": done, "again": again,
    "library": type(d.euclidean._cache).__name__,
    "hits": sum(d.euclidean.stats.cache_hits.values()),
    "own": type(own._cache).__name__,
    "restored": numba.njit is numba.core.decorators.njit and numba.jit is numba.core.decorators.jit,
}))
"""


def _probe(cache_dir: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_later_process_loads_the_library_code_and_numba_is_restored(tmp_path: Path) -> None:
    first = _probe(tmp_path)
    assert first["done"] == ["pynndescent"] and first["again"] == []  # imported once; no error
    assert first["library"] != "NullCache" and first["hits"] == 0  # cached, compiled here
    assert first["own"] == "NullCache" and first["restored"]  # the caller's numba untouched
    assert any(tmp_path.rglob("*.nbi"))  # numba's index, in numba's cache folder
    second = _probe(tmp_path)
    assert second["hits"] >= 1  # loaded, not compiled
