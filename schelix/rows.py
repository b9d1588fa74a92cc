"""Cells of a sparse matrix, densified, scaled and gated only when a mini-batch asks for them.

The model trains on scaled genes, ``clip((x - mean) / std, -10, 10)``, which are dense (centring
fills every zero). Holding them for every cell costs ``cells x genes x 4`` bytes (8 GB at a
million cells x 2,000 genes), so :class:`ScaledRows` keeps the log-normalized CSR matrix and
builds the scaled rows of each mini-batch (and each embedding chunk) on the way to the device.
Every operation is elementwise per row, so a row comes out bit-identical to the same row of the
fully densified matrix; :func:`column_moments` reproduces numpy's ``mean(0)`` / ``std(0)`` of the
dense float32 matrix to the bit, chunk by chunk.

On a GPU the scaled matrix is moved to the device once, chunk by chunk, when it fits
(:meth:`ScaledRows.to_device`): mini-batches are then gathered there, with no host round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CHUNK", "ScaledRows", "column_moments"]

#: Rows densified at a time when a whole matrix is walked (moments, device copy).
CHUNK = 8192

GammaFn = Callable[[np.ndarray], np.ndarray]


def _sequential_sum(
    x: sp.csr_matrix, shift: np.ndarray | None, cols: np.ndarray | None = None
) -> np.ndarray:
    """numpy's float32 column sum of the dense ``x`` (minus ``shift``, squared), chunk by chunk.

    numpy reduces a C-ordered float32 matrix along axis 0 row after row, so carrying the
    running sum as the first row of the next chunk gives the very same float32 rounding.
    """
    acc = None
    for s in range(0, x.shape[0], CHUNK):
        c = np.asarray(x[s : s + CHUNK].toarray(), dtype=np.float32)
        c = c if cols is None else c[:, cols]
        if shift is not None:
            c = c - shift
            c = c * c
        acc = np.add.reduce(c, axis=0) if acc is None else np.add.reduce(np.vstack([acc[None], c]))
    return acc


def column_moments(x: sp.spmatrix, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of the columns ``cols`` (all when ``None``): equal to
    ``dense[:, cols].mean(0), dense[:, cols].std(0)`` in float32."""
    x = sp.csr_matrix(x, dtype=np.float32)
    n = np.float32(x.shape[0])
    mean = _sequential_sum(x, None, cols) / n
    return mean, np.sqrt(_sequential_sum(x, mean, cols) / n)


class ScaledRows:
    """Scaled (and, for variants, gated) rows of a CSR matrix, built on request.

    Parameters
    ----------
    x
        Cells x genes log-normalized values (CSR, float32).
    cols
        The columns of ``x`` these rows hold (``None``: all), so that two streams can share one
        matrix (e.g. ``adata.X`` itself, with no copy).
    mean, std
        Per-gene scaling; rows become ``clip((x - mean) / std, -10, 10)``.
    gate
        ``gate(rows) -> (len(rows) x genes)`` damping factor ``1 - strength * gamma`` of the
        cells ``rows`` (variant stream only), or ``None``.

    ``rows[idx]`` (integer indices, a torch index tensor or a slice) returns a float32 tensor.
    """

    def __init__(
        self,
        x: sp.csr_matrix,
        mean: np.ndarray,
        std: np.ndarray,
        gate: GammaFn | None = None,
        cols: np.ndarray | None = None,
    ) -> None:
        self.x = sp.csr_matrix(x, dtype=np.float32)
        self.cols = None if cols is None else np.asarray(cols)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.gate = gate
        self.device_rows: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x.shape[0], self.x.shape[1] if self.cols is None else len(self.cols))

    def __len__(self) -> int:
        return self.x.shape[0]

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        rows = self.x[idx]
        if self.cols is not None:  # pick the columns while sparse: C-ordered, and only these
            rows = rows[:, self.cols]  # are densified (dense x[:, cols] was F-ordered, 4x slower)
        x = np.asarray(rows.toarray(), dtype=np.float32)
        x -= self.mean  # in place: the same float32 operations as clip((x - mean) / std, ...)
        x /= self.std
        np.clip(x, -10, 10, out=x)
        if self.gate is not None:
            x *= self.gate(idx)
        return x

    def __getitem__(self, idx: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        if self.device_rows is not None:
            if isinstance(idx, torch.Tensor):
                idx = idx.to(self.device_rows.device)
            return self.device_rows[idx]
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        elif isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return torch.from_numpy(np.ascontiguousarray(self._rows(np.asarray(idx)), np.float32))

    def to_device(self, device: str, *, max_fraction: float = 0.5) -> bool:
        """Copy all scaled rows to ``device`` (chunk by chunk) if they take at most
        ``max_fraction`` of its free memory; returns whether they now live there.

        Only for CUDA: on the CPU the rows stay sparse and are built per mini-batch.
        """
        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            return False
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if 4 * self.shape[0] * self.shape[1] > max_fraction * free:
            return False
        out = torch.empty(self.shape, dtype=torch.float32, device=device)
        for s in range(0, len(self), CHUNK):
            rows = np.arange(s, min(s + CHUNK, len(self)))
            out[s : s + len(rows)] = torch.from_numpy(self._rows(rows)).to(device)
        self.device_rows = out
        return True
