"""Several training seeds of one model: mean and spread of each headline metric across them.

A single checkpoint's number mixes the model's quality with the luck of its seed; two seeds of one
architecture can differ by more than two architectures do. Reporting the mean and the spread across
seeds beside each metric (and the subject-level interval of each seed in its own entry) keeps the
two sources of noise apart: the interval is benchmark sampling, the spread is training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# name -> key path into one model's metrics.json entry (tuples: keys such as "0.01" hold dots)
SEED_METRICS: dict[str, tuple[str, ...]] = {
    **{
        k: ("subject_level", "headline", k, "value")
        for k in (
            "mae",
            "cs_5",
            "under_18_pass_rate_at_18",
            "under_18_pass_rate_at_21",
            "under_18_pass_rate_at_25",
            "false_rejection_18_20_at_18",
            "false_rejection_18_20_at_21",
            "false_rejection_18_20_at_25",
            "challenge_25_fpr_14_17",
            "challenge_25_fpr_under_18",
            "challenge_25_fnr_25_plus",
            "fallback_rate_18",
            "coverage_p95",
        )
    },
    "matched_rejection_18_20_at_u18_pass_1pct": (
        "operating",
        "18",
        "matched",
        "0.01",
        "legal_age_rejection_rate",
        "value",
    ),
    "matched_rejection_18_20_at_u18_pass_1pct_k_std": (
        "operating",
        "18",
        "matched",
        "0.01",
        "k_std",
        "legal_age_rejection_rate",
        "value",
    ),
    "challenge_age_for_1pct_fpr_14_17": ("operating", "challenge_age_for_fpr", "0.01", "value"),
    "gaussian_nll": ("uncertainty", "gaussian_nll"),
}


def _value(entry: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = entry
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    x = float(node)
    return x if math.isfinite(x) else None


def spread(values: Sequence[float]) -> dict[str, Any]:
    """{n, mean, std (sample, null for one seed), min, max, values}."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def seed_summary(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model name: its checkpoints and, per metric, the spread across their entries."""
    out = []
    for name, entries in groups.items():
        metrics = {}
        for key, path in SEED_METRICS.items():
            vals = [v for e in entries if (v := _value(e, path)) is not None]
            metrics[key] = spread(vals)
        out.append(
            {
                "model": name,
                "entries": [e["name"] for e in entries],
                "checkpoints": [e.get("checkpoint", "") for e in entries],
                "metrics": metrics,
            }
        )
    return out


def format_seed_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table: mean ± sd across seeds for the figures a release note quotes."""
    cols = [
        ("MAE", "mae"),
        ("C25 FPR 14-17", "challenge_25_fpr_14_17"),
        ("C25 all<18", "challenge_25_fpr_under_18"),
        ("C25 FNR 25+", "challenge_25_fnr_25_plus"),
        ("u18 pass @21", "under_18_pass_rate_at_21"),
        ("18-20 rej @21", "false_rejection_18_20_at_21"),
        ("18-20 rej @u18 pass 1%", "matched_rejection_18_20_at_u18_pass_1pct"),
        ("challenge age @1% FPR", "challenge_age_for_1pct_fpr_14_17"),
        ("cov95", "coverage_p95"),
    ]

    def cell(s: Mapping[str, Any]) -> str:
        if s["mean"] is None:
            return "-"
        return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")

    lines = ["model (seeds) | " + " | ".join(c for c, _ in cols)]
    for r in rows:
        n = max((m["n"] for m in r["metrics"].values()), default=0)
        lines.append(f"{r['model']} ({n}) | " + " | ".join(cell(r["metrics"][k]) for _, k in cols))
    return "\n".join(lines)
