"""Population stability index of the estimate distribution: a label-free drift signal.

Verified ages arrive days late and for few users, so a shift in what the model *predicts* is the
earliest warning that the input population (or the camera pipeline) changed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# Edges at every policy threshold, so a shift across 13/16/18/21/25 is never hidden inside one bin.
PSI_EDGES: tuple[float, ...] = (-math.inf, 10, 13, 16, 18, 21, 25, 30, 40, 50, 65, math.inf)
# Conventional reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
DEFAULT_PSI_ALERT = 0.2
# Proportion floor so an empty bin gives a large, finite PSI instead of infinity.
PSI_EPS = 1e-4


def histogram_proportions(values: ArrayLike, edges: Sequence[float] = PSI_EDGES) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    counts = np.array([np.sum((v >= lo) & (v < hi)) for lo, hi in itertools.pairwise(edges)], dtype=np.float64)
    return counts / v.size if v.size else counts


def population_stability_index(
    reference: ArrayLike, current: ArrayLike, edges: Sequence[float] = PSI_EDGES, eps: float = PSI_EPS
) -> float:
    """sum((c - r) * ln(c / r)) over bins; NaN when either sample is empty (nothing to compare)."""
    r = histogram_proportions(reference, edges)
    c = histogram_proportions(current, edges)
    if not np.asarray(reference).size or not np.asarray(current).size:
        return math.nan
    r = np.maximum(r, eps)
    c = np.maximum(c, eps)
    return float(np.sum((c - r) * np.log(c / r)))
