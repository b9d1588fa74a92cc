"""Label transfer from reference to query cells by weighted kNN on the fused embedding.

For each query cell, its :data:`K` nearest labelled reference cells vote with Gaussian weights
``exp(-(d / sigma)^2)``, ``sigma`` being the reference's own median distance to its k-th
neighbour. The probability of a label is its share of the weight; the uncertainty is
``1 - max probability``. A cell whose mean distance to its neighbours is more than
:data:`OUT_OF_REFERENCE` times the reference's own 99th percentile of that distance is outside
the reference (a cell state it does not hold) and gets uncertainty 1. Cells with uncertainty
above the threshold (default :data:`UNKNOWN_ABOVE`) are labelled :data:`UNKNOWN`: a new cell
state is not forced into a known type.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError
from schelix.obs import label_mask

__all__ = ["K", "OUT_OF_REFERENCE", "UNKNOWN", "UNKNOWN_ABOVE", "Transfer", "transfer_labels"]

K = 15
UNKNOWN = "Unknown"
UNKNOWN_ABOVE = 0.5
OUT_OF_REFERENCE = 2.0
#: reference cells used to calibrate the distance scale (a seeded sample of large references)
_CALIBRATION_CELLS = 5000


@dataclass(frozen=True)
class Transfer:
    """Transferred labels of query cells.

    Attributes
    ----------
    labels
        Predicted label per query cell (:data:`UNKNOWN` above the uncertainty threshold).
    probability
        Share of the neighbours' weight of the predicted label.
    uncertainty
        ``1 - probability``; 1 for cells outside the reference.
    classes, probabilities
        The reference labels and the ``(n_query x n_classes)`` probabilities.
    """

    labels: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray


def transfer_labels(
    reference: np.ndarray,
    labels: np.ndarray,
    query: np.ndarray,
    *,
    k: int = K,
    threshold: float | None = None,
) -> Transfer:
    """Weighted kNN transfer of ``labels`` (of the ``reference`` embedding) to ``query``.

    Reference cells without a usable label (:data:`schelix.obs.MISSING_LABELS`) do not vote.
    """
    from sklearn.neighbors import NearestNeighbors

    threshold = UNKNOWN_ABOVE if threshold is None else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise SchelixError(
            f"Uncertainty threshold {threshold} is outside [0, 1]", "choose e.g. 0.5"
        )
    labels = np.asarray(labels).astype(str)
    keep = label_mask(labels)
    if keep.sum() < 2:
        raise SchelixError(
            "The reference has fewer than two labelled cells to transfer from",
            "choose a label column that holds cell types",
        )
    ref = np.asarray(reference, np.float32)[keep]
    classes, codes = np.unique(labels[keep], return_inverse=True)
    k = int(min(k, len(ref) - 1))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(ref)
    rng = np.random.default_rng(0)
    cal = rng.choice(len(ref), min(len(ref), _CALIBRATION_CELLS), replace=False)
    d_ref, _ = nn.kneighbors(ref[cal])  # self first
    sigma = max(float(np.median(d_ref[:, k])), 1e-8)
    far = OUT_OF_REFERENCE * float(np.quantile(d_ref[:, 1:].mean(1), 0.99))
    dist, idx = nn.kneighbors(np.asarray(query, np.float32), n_neighbors=k)
    w = np.exp(-((dist / sigma) ** 2)) + 1e-12
    probs = np.zeros((len(dist), len(classes)))
    np.add.at(probs, (np.repeat(np.arange(len(dist)), k), codes[idx].ravel()), w.ravel())
    probs /= probs.sum(1, keepdims=True)
    best = probs.argmax(1)
    p = probs[np.arange(len(best)), best]
    unc = 1.0 - p
    unc[dist.mean(1) > far] = 1.0
    pred = classes[best].astype(object)
    pred[unc > threshold] = UNKNOWN
    return Transfer(pred.astype(str), p, unc, classes, probs)


def write(joint: ad.AnnData, label: str, res: Transfer, is_query: np.ndarray) -> None:
    """``obs[<label>_transferred | _probability | _uncertainty]`` of a joint AnnData.

    Reference rows keep their own label (probability 1, uncertainty 0).
    """
    own = joint.obs[label].astype(object).to_numpy()
    out = np.where(is_query, "", own).astype(object)
    out[is_query] = res.labels
    prob, unc = np.ones(joint.n_obs), np.zeros(joint.n_obs)
    prob[is_query], unc[is_query] = res.probability, res.uncertainty
    joint.obs[f"{label}_transferred"] = pd.Categorical(out.astype(str))
    joint.obs[f"{label}_probability"] = prob.astype(np.float32)
    joint.obs[f"{label}_uncertainty"] = unc.astype(np.float32)
