"""What a viewer lists: the ``obsm`` names of a written h5ad, by cellxgene's layout rules.

cellxgene offers every ``obsm`` entry whose name starts with ``X_`` as a 2-d layout (it draws
the first two columns of a 16-d latent as if it were one), keeps only the first 30 in name
order, and opens on ``X_umap`` when it is there. A result file full of ``X_`` latents and
snapshot UMAPs therefore loses ``X_umap`` and opens on the uncorrected PCA.

:func:`for_viewers` renames ``obsm`` so that only real 2-d layouts start with ``X_``:

- ``X_umap``: the UMAP of the fused scHelix embedding (from ``X_schelix_umap``);
- ``X_umap_<stage>``: the stage UMAPs (``X_umap_variant``, ``X_umap_variant_aligned``,
  ``X_umap_anchor``, ``X_umap_anchor_refined``) and the peers' UMAPs (``X_umap_harmony``,
  ``X_umap_pca`` ...);
- every other embedding keeps its name without the ``X_``: the latents (``schelix``,
  ``schelix_variant``, ``pca``, ``harmony`` ...) and the snapshots (``schelix_snapshot_<step>``,
  ``schelix_snapshot_<step>_umap``). ``sc.pp.neighbors(adata, use_rep="schelix")`` works.

``uns["schelix"]["obsm_names"]`` maps each new name to the name the pipeline wrote, so
:func:`original_names` can undo it (``schelix evaluate`` accepts either name).
"""

from __future__ import annotations

import re

import anndata as ad
import numpy as np

__all__ = ["MAX_LAYOUTS", "for_viewers", "layout_names", "original_names"]

#: cellxgene keeps this many layouts (in name order).
MAX_LAYOUTS = 30
_SNAPSHOT = re.compile(r"_snapshot_\d+")


def _is_layout(value: object, n_obs: int) -> bool:
    """cellxgene's test of a layout: 2-d, one row per cell, numeric, finite, >= 2 columns."""
    arr = np.asarray(value)
    return (
        arr.ndim == 2
        and arr.shape[0] == n_obs
        and arr.shape[1] >= 2
        and arr.dtype.kind in "fiu"
        and bool(np.isfinite(arr).all())
    )


def layout_names(adata: ad.AnnData) -> list[str]:
    """The layouts cellxgene 1.x would list for ``adata``: ``X_<name>`` -> ``<name>``, capped.

    The same rules as its AnnData adaptor: every ``obsm`` key starting with ``X_`` whose value
    is a valid layout, in name order (the order an h5ad file stores them), the first
    :data:`MAX_LAYOUTS`.
    """
    keys = sorted(k for k in adata.obsm if isinstance(k, str) and k.startswith("X_"))
    return [k[2:] for k in keys if _is_layout(adata.obsm[k], adata.n_obs)][:MAX_LAYOUTS]


def _new_name(key: str, value: np.ndarray) -> str:
    """Where ``obsm[key]`` goes: a listed ``X_umap...`` layout or an unlisted plain name."""
    if not key.startswith("X_"):
        return key
    base = key[2:]
    two_d = np.ndim(value) == 2 and np.shape(value)[1] == 2
    if key == "X_umap" or (two_d and not base.endswith("_umap")):
        return key if two_d and not _SNAPSHOT.search(key) else base  # X_umap, X_tsne ...
    if base.endswith("_umap") and two_d and not _SNAPSHOT.search(base):
        of = base[: -len("_umap")]
        if of == "schelix":
            return "X_umap"
        return "X_umap_" + (of[len("schelix_") :] if of.startswith("schelix_") else of)
    return base


def for_viewers(adata: ad.AnnData) -> ad.AnnData:
    """A copy of ``adata`` whose ``obsm`` a viewer reads right (see the module docstring).

    At most :data:`MAX_LAYOUTS` names start with ``X_``, all of them 2-d, ``X_umap`` among
    them when the fused UMAP (``X_schelix_umap``) or an ``X_umap`` is present.
    """
    out = adata.copy()
    obsm = dict(out.obsm)
    renamed: dict[str, str] = {}
    order = sorted(obsm, key=lambda k: (k != "X_umap", k))  # an existing X_umap wins
    new: dict[str, np.ndarray] = {}
    for key in order:
        name = _new_name(key, obsm[key])
        if name in new:  # X_schelix_umap when X_umap is already there (the same UMAP)
            if np.array_equal(np.asarray(new[name]), np.asarray(obsm[key])):
                continue
            name = f"{key[2:] if key.startswith('X_') else key}_copy"
        new[name] = obsm[key]
        if name != key:
            renamed[name] = key
    layouts = sorted(k for k in new if k.startswith("X_"))
    keep = [k for k in layouts if k == "X_umap"] + [k for k in layouts if k != "X_umap"]
    for key in keep[MAX_LAYOUTS:]:  # more than a viewer keeps: stored, not listed
        plain = key[2:]
        new[plain] = new.pop(key)
        renamed[plain] = renamed.pop(key, key)
    for key in list(out.obsm):
        del out.obsm[key]
    for key, value in new.items():
        out.obsm[key] = value
    out.uns.setdefault("schelix", {})["obsm_names"] = dict(sorted(renamed.items()))
    return out


def original_names(adata: ad.AnnData) -> dict[str, str]:
    """``{name the pipeline wrote: name in this file}`` for a file written by :func:`for_viewers`."""
    names = adata.uns.get("schelix", {}).get("obsm_names", {}) or {}
    return {str(old): str(new) for new, old in names.items() if new in adata.obsm}
