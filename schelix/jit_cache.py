"""Numba's compiled code of pynndescent and umap-learn, kept on disk from one process to the next.

pynndescent (scanpy's neighbour search above 4,096 cells, scib-metrics' neighbours) and
umap-learn compile about a hundred numba functions when imported and on their first call, and
ask numba to cache few of them. Every ``schelix`` command and every background job of the app
is a new process, so each paid that compilation again: a fresh process's first neighbours and
UMAP of 5,000 cells took 21 s, 5 s of it the work itself (``benchmarks/job_startup.py``).

:func:`enable` imports both libraries with numba's ``cache=True`` as the default of the
functions they define (a setting the library gives explicitly is kept), so that every later
process loads them from numba's own cache. Numba keys that cache by the source file, the
function, its types and the CPU, and stores it beside the library or, where that is read-only,
in the user's cache folder (or ``NUMBA_CACHE_DIR``); nothing is written into a workspace.

Only the process's own entry points call it (the ``schelix`` command, the app's background
jobs): importing :mod:`schelix` changes nothing in numba.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["LIBRARIES", "enable"]

#: The libraries whose numba functions are cached, in import order (umap-learn imports
#: pynndescent).
LIBRARIES = ("pynndescent", "umap")
_LOCK = threading.Lock()


def _caching(decorator: Callable[..., Any]) -> Callable[..., Any]:
    """``decorator`` (numba's ``jit`` or ``njit``) with ``cache=True`` unless given."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cache", True)
        return decorator(*args, **kwargs)

    return wrapper


@contextmanager
def _cache_by_default() -> Iterator[None]:
    """Inside the block, functions decorated with ``numba.jit`` / ``numba.njit`` are cached."""
    import numba

    saved = {name: getattr(numba, name) for name in ("jit", "njit")}
    try:
        for name, decorator in saved.items():
            setattr(numba, name, _caching(decorator))
        yield
    finally:
        for name, decorator in saved.items():
            setattr(numba, name, decorator)


def enable(libraries: Sequence[str] = LIBRARIES) -> list[str]:
    """Import ``libraries`` with their numba functions cached on disk; returns those imported here.

    A library that this process has already imported is left as it is (its functions were
    defined without the cache); one that is not installed is skipped. Safe to call more than
    once and from several threads.
    """
    done = []
    with _LOCK:
        for name in libraries:
            if name in sys.modules:
                continue
            try:
                with _cache_by_default():
                    importlib.import_module(name)
            except ImportError:
                continue
            done.append(name)
    return done
