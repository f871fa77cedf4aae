"""Subject-level (cluster) bootstrap: the one resampling helper behind every interval and test.

Each person contributes several images that share a persistent error (someone who looks older looks
older in every photo), so images are not independent draws. Resampling images treats n images of k
people as n independent observations and gives intervals 1.5-2x too narrow. Here the unit of
resampling is the subject: a replicate draws subjects with replacement, and every image of a drawn
subject enters with the number of times its subject was drawn as its weight. A statistic that is a
mean of a per-row value over eligible rows is then `sum(w*v*e) / sum(w*e)` per replicate, one matrix
product for all replicates; anything else (a matched cutoff, a quantile) takes the (B, n) `weights`.

The same `SubjectBootstrap` (same draws) applied to two models scored on the same rows gives a
*paired* bootstrap of their difference, which is what a release gate needs: the subjects that are
hard for one model are hard for the other, and pairing removes that shared variance.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

DEFAULT_BOOTSTRAP = 1000


def seeded_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator keyed by a seed and names; crc32, not hash(), because str hashing is salted per process."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


class SubjectBootstrap:
    """Replicate weights for a cluster bootstrap over subjects, for rows aligned with `subject_id`.

    Rows without a subject id (None given) are each their own subject, which reduces to the ordinary
    row bootstrap. `weights` is (n_boot, n_rows): how many times each row's subject was drawn.
    """

    def __init__(
        self,
        subject_id: Sequence[Any] | NDArray[Any] | None,
        n_rows: int,
        *,
        n_boot: int = DEFAULT_BOOTSTRAP,
        seed: int = 0,
        name: str = "",
    ) -> None:
        if subject_id is None:
            codes = np.arange(n_rows)
        else:
            ids = np.asarray([str(x) for x in subject_id], dtype=object)
            if ids.shape[0] != n_rows:
                raise ValueError(f"subject_id has {ids.shape[0]} values for {n_rows} rows")
            _, codes = np.unique(ids, return_inverse=True)
        self.codes: NDArray[np.int64] = np.asarray(codes, dtype=np.int64).reshape(-1)
        self.n_rows = n_rows
        self.n_clusters = int(self.codes.max()) + 1 if n_rows else 0
        self.n_boot = max(int(n_boot), 0)
        self.seed = seed
        k, b = self.n_clusters, self.n_boot
        if k == 0 or b == 0:
            self.weights: FloatArray = np.zeros((b, n_rows))
            return
        draws = seeded_rng(seed, "subject-bootstrap", name).integers(0, k, size=(b, k))
        counts = np.bincount((draws + np.arange(b)[:, None] * k).ravel(), minlength=b * k).reshape(b, k)
        self.weights = counts[:, self.codes].astype(np.float64)

    def n_subjects(self, mask: ArrayLike | None = None) -> int:
        """Distinct subjects among the rows in `mask` (all rows when None): the effective cell size."""
        codes = self.codes if mask is None else self.codes[np.asarray(mask, dtype=bool)]
        return int(np.unique(codes).shape[0])

    def means(self, values: ArrayLike, eligible: ArrayLike | None = None) -> FloatArray:
        """Replicates of mean(values[eligible]); NaN in a replicate that drew no eligible subject."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        e = np.ones_like(v) if eligible is None else np.asarray(eligible, dtype=np.float64).reshape(-1)
        if self.n_boot == 0 or not e.any():
            return np.full(self.n_boot, np.nan)
        v = np.where(e > 0, v, 0.0)  # a NaN in an ineligible row must not leak into the sum
        num = self.weights @ (v * e)
        den = self.weights @ e
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return out

    def means_many(self, values: FloatArray, eligible: NDArray[np.bool_]) -> FloatArray:
        """`means` for many cells at once: values and eligible are (n_rows, n_cells); returns
        (n_boot, n_cells). One matrix product instead of one per cell."""
        e = eligible.astype(np.float64)
        v = np.where(eligible, values, 0.0)
        num = self.weights @ (v * e)
        den = self.weights @ e
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return out


def percentile_interval(reps: ArrayLike, level: float = 0.95) -> list[float] | None:
    """Central percentile interval of the finite replicates; None when there are none."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not r.size:
        return None
    a = (1.0 - level) / 2.0
    return [float(np.quantile(r, a)), float(np.quantile(r, 1.0 - a))]


def estimate(
    boot: SubjectBootstrap, values: ArrayLike, eligible: ArrayLike | None = None, level: float = 0.95
) -> dict[str, Any]:
    """{value, ci, n_subjects, n_images} for a mean over eligible rows: the cell every table prints."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    e = np.ones(v.shape, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).reshape(-1)
    n_images = int(e.sum())
    value = float(v[e].mean()) if n_images else math.nan
    return {
        "value": value if math.isfinite(value) else None,
        "ci": percentile_interval(boot.means(v, e), level) if n_images else None,
        "n_subjects": boot.n_subjects(e) if n_images else 0,
        "n_images": n_images,
    }


def estimates(
    boot: SubjectBootstrap, columns: Sequence[tuple[FloatArray, NDArray[np.bool_]]], level: float = 0.95
) -> list[dict[str, Any]]:
    """`estimate` for many (values, eligible) cells, sharing one pair of matrix products."""
    if not columns:
        return []
    values = np.stack([np.asarray(v, dtype=np.float64) for v, _ in columns], axis=1)
    eligible = np.stack([np.asarray(e, dtype=bool) for _, e in columns], axis=1)
    reps = boot.means_many(values, eligible)
    out = []
    for i in range(values.shape[1]):
        e = eligible[:, i]
        n_images = int(e.sum())
        value = float(values[e, i].mean()) if n_images else math.nan
        out.append(
            {
                "value": value if math.isfinite(value) else None,
                "ci": percentile_interval(reps[:, i], level) if n_images else None,
                "n_subjects": boot.n_subjects(e) if n_images else 0,
                "n_images": n_images,
            }
        )
    return out
