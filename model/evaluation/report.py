"""metrics.json (versioned schema, docs/evaluation.md) and a self-contained report.html.

Every model evaluated in one run sits side by side in one file, against one dataset identified by
its manifest hash, so a comparison across different data cannot be produced by accident.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation.bootstrap import DEFAULT_BOOTSTRAP, SubjectBootstrap
from model.evaluation.calibration import (
    COVERAGE_LEVELS,
    coverage,
    coverage_by_band,
    gaussian_nll,
    threshold_calibration,
)
from model.evaluation.fairness import DEFAULT_MIN_CELL_SIZE, fairness_report, significant_gaps
from model.evaluation.metrics import (
    BUFFERS,
    DEFAULT_CONFIDENCE,
    THRESHOLDS,
    Estimates,
    accuracy_summary,
    by_age_band,
    by_single_year,
    challenge_metrics,
    nist_metrics,
    prob_at_least,
    threshold_metrics,
)
from model.evaluation.operating import operating_report
from model.evaluation.subject_stats import DEFINITIONS, by_year_cells, headline_cells

SCHEMA_VERSION = 2  # 2: subject-level intervals, NIST Challenge-25 names, operating points
CALIBRATION_THRESHOLDS: tuple[int, ...] = (13, 16, 18, 21, 25)


class DatasetMismatchError(ValueError):
    """Two sets of numbers come from different data and must not be compared."""


def model_metrics(
    est: Estimates,
    *,
    name: str,
    checkpoint: str = "",
    model_version: str = "",
    thresholds: Sequence[int] = THRESHOLDS,
    buffers: Sequence[int] = BUFFERS,
    confidence: float = DEFAULT_CONFIDENCE,
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    t, m, s = est.true_age, est.mean, est.std
    has_std = bool(len(est)) and bool(np.all(np.isfinite(s)))
    uncertainty: dict[str, Any] = {"available": has_std}
    if has_std:
        uncertainty.update(
            {
                "gaussian_nll": gaussian_nll(t, m, s),
                "coverage": {"overall": coverage(t, m, s, COVERAGE_LEVELS), "by_age_band": coverage_by_band(t, m, s)},
            }
        )
    uncertainty["calibration"] = {
        str(T): threshold_calibration(t, prob_at_least(est, T), T) for T in CALIBRATION_THRESHOLDS
    }
    by_group = {
        a: {
            g: {"accuracy": accuracy_summary(t[sel], m[sel], ks=(5,)), "nist": nist_metrics(t[sel], m[sel])}
            for g in sorted({str(x) for x in est.attributes[a]})
            for sel in [est.attributes[a] == g]
        }
        for a in est.attributes
    }
    # One subject-level bootstrap for every interval of this model: same people resampled everywhere.
    boot = SubjectBootstrap(est.subject_id, len(est), n_boot=n_boot, seed=seed)
    fairness = fairness_report(
        est, min_cell_size=min_cell_size, n_boot=n_boot, seed=seed, confidence=confidence, boot=boot
    )
    return {
        "name": name,
        "checkpoint": checkpoint,
        "model_version": model_version,
        "n_scored": len(est),
        "n_errors": est.n_errors,
        "accuracy": {
            "overall": accuracy_summary(t, m),
            "by_age_year": by_single_year(t, m),
            "by_age_band": by_age_band(t, m),
        },
        "thresholds": threshold_metrics(est, thresholds, buffers, confidence),
        "nist": nist_metrics(t, m),
        "challenge": challenge_metrics(t, m),
        "subject_level": {
            "n_subjects": boot.n_subjects(),
            "n_images": len(est),
            "headline": headline_cells(est, boot, confidence),
            "by_year": by_year_cells(est, boot, thresholds, buffers),
        },
        "operating": operating_report(est, boot, thresholds=thresholds),
        "uncertainty": uncertainty,
        "by_group": by_group,
        "fairness": fairness,
        "significant_gaps": significant_gaps(fairness),
        "policy_replay": None,
    }


def headline(model: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a release note quotes: one row per model."""
    thr = model["thresholds"].get("18", {})
    buffers = thr.get("buffers", {})
    largest: dict[str, Any] | None = None
    for attribute, per in model["fairness"].items():
        r = per.get("mae", {})
        if r.get("gap") is not None and (largest is None or r["gap"] > largest["gap"]):
            largest = {
                "attribute": attribute,
                "metric": "mae",
                "gap": r["gap"],
                "gap_ci": r["gap_ci"],
                "max_group": r["max_group"],
                "min_group": r["min_group"],
                "significant": r["significant"],
            }
    return {
        "model": model["name"],
        "mae": model["accuracy"]["overall"]["mae"],
        "cs_5": model["accuracy"]["overall"]["cs_5"],
        "under_18_pass_rate_at_18": buffers.get("0", {}).get("under_age_pass_rate"),
        "under_18_pass_rate_at_21": buffers.get("3", {}).get("under_age_pass_rate"),
        "under_18_pass_rate_at_25": buffers.get("7", {}).get("under_age_pass_rate"),
        "false_rejection_18_20_at_18": buffers.get("0", {}).get("false_rejection_rate"),
        "false_rejection_18_20_at_21": buffers.get("3", {}).get("false_rejection_rate"),
        "false_rejection_18_20_at_25": buffers.get("7", {}).get("false_rejection_rate"),
        "fallback_rate_at_18": thr.get("uncertainty_rule", {}).get("fallback_rate"),
        "under_18_pass_rate_uncertainty_rule": thr.get("uncertainty_rule", {}).get("under_age_pass_rate"),
        "largest_mae_gap": largest,
    }


def build_metrics(
    models: Sequence[dict[str, Any]], *, dataset: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": dict(dataset),
        "config": dict(config),
        "definitions": dict(DEFINITIONS),
        "models": list(models),
        "headline": [headline(m) for m in models],
    }


def _clean(x: Any) -> Any:
    """JSON has no NaN: undefined metrics (empty groups) become null."""
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_metrics_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_clean(metrics), indent=1, sort_keys=False, allow_nan=False))
    tmp.replace(p)
    return p


def load_metrics_json(path: str | Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: metrics schema {doc.get('schema_version')!r}, this build reads {SCHEMA_VERSION}")
    return doc


def require_same_dataset(claimed_hash: str, actual_hash: str, what: str = "the baseline report") -> None:
    if claimed_hash != actual_hash:
        raise DatasetMismatchError(
            f"manifest hash {actual_hash} does not match {claimed_hash} recorded in {what}; "
            "numbers from different data cannot be compared: re-run the baseline on this manifest"
        )


# --- HTML ------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def _plots(metrics: Mapping[str, Any], estimates: Mapping[str, Estimates] | None = None) -> list[tuple[str, str]]:
    """Every figure, in reading order: interval reliability, operating curves, per-year rates, estimate vs
    true age and error histograms (these need the rows: `estimates`, by model name), then the older views."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and pods have no display
    import matplotlib.pyplot as plt

    models = metrics["models"]
    out: list[tuple[str, str]] = []
    out.extend(_reliability_plot(plt, models))
    out.extend(_operating_plots(plt, models))
    out.extend(_by_year_plots(plt, models))
    if estimates:
        out.extend(_estimate_plots(plt, models, estimates))

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    for m in models:
        years = m["accuracy"]["by_age_year"]
        xs = sorted(int(y) for y in years)
        ax[0].plot(xs, [_nan(years[str(y)]["mae"]) for y in xs], marker=".", label=m["name"])
        ax[1].plot(xs, [_nan(years[str(y)]["mean_signed_error"]) for y in xs], marker=".", label=m["name"])
    ax[0].set(title="MAE by true age", xlabel="true age (years)", ylabel="MAE (years)")
    ax[1].set(title="Mean signed error by true age", xlabel="true age (years)", ylabel="estimate - true (years)")
    ax[1].axhline(0, color="grey", lw=0.5)
    ax[0].legend()
    out.append(("Error by age", _png(fig)))

    thresholds = list(models[0]["thresholds"]) if models else []
    if thresholds:
        fig, axes = plt.subplots(1, len(thresholds), figsize=(4.2 * len(thresholds), 3.6), squeeze=False)
        for ax_, T in zip(axes[0], thresholds, strict=True):
            for m in models:
                bufs = m["thresholds"][T]["buffers"]
                bs = sorted(int(b) for b in bufs)
                line = ax_.plot(
                    bs,
                    [_nan(bufs[str(b)]["under_age_pass_rate"]) for b in bs],
                    marker="o",
                    label=f"{m['name']} under-{T} pass",
                )
                ax_.plot(
                    bs,
                    [_nan(bufs[str(b)]["false_rejection_rate"]) for b in bs],
                    ls="--",
                    marker="x",
                    color=line[0].get_color(),
                    label=f"{m['name']} {T}-{int(T) + 2} rejected",
                )
            ax_.set(
                title=f"T={T}: pass if estimate >= T+buffer", xlabel="buffer (years)", ylabel="rate", ylim=(-0.02, 1.02)
            )
            ax_.legend(fontsize=7)
        out.append(("Threshold error rates with buffers", _png(fig)))

    fig, axes = plt.subplots(
        1, len(CALIBRATION_THRESHOLDS), figsize=(3.3 * len(CALIBRATION_THRESHOLDS), 3.3), squeeze=False
    )
    for ax_, T in zip(axes[0], CALIBRATION_THRESHOLDS, strict=True):
        ax_.plot([0, 1], [0, 1], color="grey", lw=0.5)
        for m in models:
            cal = m["uncertainty"]["calibration"].get(str(T))
            if not cal:
                continue
            bins = [b for b in cal["bins"] if b["n"]]
            ax_.plot(
                [b["mean_predicted"] for b in bins],
                [b["observed"] for b in bins],
                marker="o",
                label=f"{m['name']} ECE {_nan(cal['ece']):.3f}",
            )
        ax_.set(title=f"P(age >= {T})", xlabel="predicted", ylabel="observed", xlim=(0, 1), ylim=(0, 1))
        ax_.legend(fontsize=7)
    out.append(("Calibration (reliability curves)", _png(fig)))

    fair_metrics = ("mae", "under_18_pass_rate_b3", "false_rejection_18_20_b3")
    attributes = list(models[0]["fairness"]) if models else []
    for attribute in attributes:
        fig, axes = plt.subplots(1, len(fair_metrics), figsize=(4.2 * len(fair_metrics), 3.4), squeeze=False)
        for ax_, metric in zip(axes[0], fair_metrics, strict=True):
            width = 0.8 / max(len(models), 1)
            for i, m in enumerate(models):
                cells = m["fairness"][attribute][metric]["groups"]
                names = list(cells)
                vals = [_nan(cells[g]["value"]) for g in names]
                lo = [v - _nan(cells[g]["ci"][0]) if cells[g]["ci"] else 0 for g, v in zip(names, vals, strict=True)]
                hi = [_nan(cells[g]["ci"][1]) - v if cells[g]["ci"] else 0 for g, v in zip(names, vals, strict=True)]
                pos = np.arange(len(names)) + i * width
                ax_.bar(pos, vals, width=width, yerr=[lo, hi], capsize=2, label=m["name"])
                ax_.set_xticks(np.arange(len(names)) + width * (len(models) - 1) / 2, names, fontsize=7)
            ax_.set(title=f"{metric} by {attribute}")
            ax_.legend(fontsize=7)
        out.append((f"By {attribute} (95% bootstrap intervals)", _png(fig)))
    return out


_FIG_W = 12.0  # inches; at dpi 90 with tight bbox this stays near 1100 px, inside a 1200 px page


def _reliability_plot(plt: Any, models: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Observed vs nominal coverage of the frame-level intervals, and of the fused belief by images fused."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="ideal (observed = nominal)")
    drawn = False
    for m in models:
        bc = (m.get("policy_replay") or {}).get("belief_coverage")
        if bc:  # the frame-level shares at 50/80/90/95%, computed beside the fused ones
            pts = [(float(lv), bc["frame"]["coverage"].get(lv)) for lv in bc["nominal"]]
        else:  # no replay: the frame-level coverage of metrics (50/80/95%)
            cov = (m["uncertainty"].get("coverage") or {}).get("overall") or {}
            pts = sorted((float(k[1:]) / 100, v) for k, v in cov.items() if k.startswith("p"))
        pts = [(a, b) for a, b in pts if b is not None]
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", lw=2, label=f"{m['name']} frame")
            drawn = True
        if bc:
            levels = [float(lv) for lv in bc["nominal"]]
            for n, cell in bc["by_fused_count"].items():
                ys = [cell["coverage"].get(lv) for lv in bc["nominal"]]
                if not cell.get("subjects") or any(y is None for y in ys):
                    continue
                ax.plot(
                    levels, ys, marker=".", ls="--", lw=1, label=f"{m['name']} belief, {n} fused (n={cell['subjects']})"
                )
                drawn = True
    if not drawn:
        plt.close(fig)
        return []
    ax.set(
        title="Interval reliability: observed vs nominal coverage",
        xlabel="nominal coverage",
        ylabel="observed coverage",
        xlim=(0.4, 1.0),
        ylim=(0.0, 1.02),
    )
    ax.legend(fontsize=7, loc="lower right")
    return [("Interval reliability (coverage vs nominal)", _png(fig))]


def _operating_plots(plt: Any, models: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """One axes per threshold, every model on it: the buffer rule swept, its 1%-matched point marked."""
    thresholds = [T for T in (models[0].get("operating") or {}) if T.isdigit()] if models else []
    if not thresholds:
        return []
    ncol = min(len(thresholds), 3)
    nrow = math.ceil(len(thresholds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(_FIG_W, 3.8 * nrow), squeeze=False)
    for ax_, T in zip(axes.flat, thresholds, strict=False):
        for m in models:
            op = (m.get("operating") or {}).get(T) or {}
            pts = [
                (c["under_age_pass_rate"], c["legal_age_rejection_rate"])
                for c in op.get("curve_buffer") or []
                if c["under_age_pass_rate"] is not None and c["legal_age_rejection_rate"] is not None
            ]
            if not pts:
                continue
            line = ax_.plot([a for a, _ in pts], [b for _, b in pts], marker=".", label=m["name"])
            matched = (op.get("matched") or {}).get("0.01") or {}
            rej = (matched.get("legal_age_rejection_rate") or {}).get("value")
            if rej is not None:
                ax_.plot(
                    [0.01],
                    [rej],
                    marker="*",
                    ms=12,
                    ls="none",
                    color=line[0].get_color(),
                    label=f"{m['name']} matched at 1% pass",
                )
        ax_.set(
            title=f"T={T}: estimate >= T+buffer swept",
            xlabel=f"under-{T} pass rate",
            ylabel=f"{T}..{int(T) + 2} rejection rate",
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
        )
        if ax_.get_legend_handles_labels()[0]:
            ax_.legend(fontsize=7)
        else:
            ax_.text(0.5, 0.5, "no under-age or legal-age rows", ha="center", transform=ax_.transAxes)
    for ax_ in list(axes.flat)[len(thresholds) :]:
        ax_.set_visible(False)
    fig.tight_layout()
    return [("Operating curves (under-age pass vs legal-age rejection)", _png(fig))]


def _by_year_plots(plt: Any, models: Sequence[Mapping[str, Any]], buffer: str = "3") -> list[tuple[str, str]]:
    """Per single year: under-age pass (10..T-1) and false rejection (T..T+4), 95% subject-level bands, n."""
    out: list[tuple[str, str]] = []
    with_sl = [m for m in models if m.get("subject_level")]
    thresholds = list(with_sl[0]["subject_level"]["by_year"]) if with_sl else []
    for T in thresholds:
        fig, ax = plt.subplots(figsize=(_FIG_W, 4.0))
        for m in with_sl:
            by = m["subject_level"]["by_year"].get(T, {}).get(buffer)
            if not by:
                continue
            color = None
            for kind, ls in (("under_age_pass", "-"), ("false_rejection", "--")):
                cells = sorted(((int(y), c) for y, c in by[kind].items() if c.get("value") is not None))
                if not cells:
                    continue
                xs = [y for y, _ in cells]
                ys = [c["value"] for _, c in cells]
                what = "under-age pass" if kind == "under_age_pass" else "false rejection"
                line = ax.plot(xs, ys, marker="o", ls=ls, color=color, label=f"{m['name']} {what}")
                color = line[0].get_color()
                lo = [c["ci"][0] if c.get("ci") else c["value"] for _, c in cells]
                hi = [c["ci"][1] if c.get("ci") else c["value"] for _, c in cells]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
                for x, (_, c) in zip(xs, cells, strict=True):
                    if c.get("n_subjects") is not None:
                        ax.annotate(
                            f"n={c['n_subjects']}",
                            (x, c["value"]),
                            textcoords="offset points",
                            xytext=(0, 6),
                            fontsize=6,
                            ha="center",
                            color=color,
                        )
        ax.axvline(int(T) - 0.5, color="grey", lw=0.8, ls=":", label=f"T={T}")
        ax.set(
            title=f"T={T}, buffer {buffer} (pass if estimate >= {int(T) + int(buffer)}): rate by true age, "
            "95% subject-level bands",
            xlabel="true age (whole years)",
            ylabel="rate",
            ylim=(-0.02, 1.05),
        )
        ax.legend(fontsize=7)
        out.append((f"Per-year pass and rejection at T={T} (n = subjects)", _png(fig)))
    return out


def _estimate_plots(
    plt: Any, models: Sequence[Mapping[str, Any]], estimates: Mapping[str, Estimates]
) -> list[tuple[str, str]]:
    """Estimate vs true age (2-D histogram, one panel per model) and the signed error histograms."""
    named = [(m["name"], estimates[m["name"]]) for m in models if m["name"] in estimates and len(estimates[m["name"]])]
    if not named:
        return []
    out: list[tuple[str, str]] = []
    ncol = min(len(named), 3)
    nrow = math.ceil(len(named) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(_FIG_W, 4.0 * nrow), squeeze=False)
    for ax_, (name, est) in zip(axes.flat, named, strict=False):
        lo = float(min(est.true_age.min(), est.mean.min()))
        hi = float(max(est.true_age.max(), est.mean.max()))
        h = ax_.hist2d(est.true_age, est.mean, bins=40, range=[[lo, hi], [lo, hi]], cmin=1, cmap="viridis")
        fig.colorbar(h[3], ax=ax_, label="images")
        ax_.plot([lo, hi], [lo, hi], color="red", lw=0.8, label="estimate = true")
        ax_.set(title=f"{name}: estimate vs true age", xlabel="true age (years)", ylabel="estimate (years)")
        ax_.legend(fontsize=7, loc="upper left")
    for ax_ in list(axes.flat)[len(named) :]:
        ax_.set_visible(False)
    fig.tight_layout()
    out.append(("Estimate vs true age", _png(fig)))

    fig, ax = plt.subplots(figsize=(_FIG_W, 3.8))
    errs = [est.mean - est.true_age for _, est in named]
    lim = float(max(np.percentile(np.abs(e), 99.5) for e in errs)) or 1.0
    bins = np.linspace(-lim, lim, 61)
    for (name, _), e in zip(named, errs, strict=True):
        ax.hist(
            np.clip(e, -lim, lim),
            bins=bins,
            histtype="step",
            lw=1.5,
            label=f"{name} (mean {e.mean():+.2f}, MAE {np.abs(e).mean():.2f})",
        )
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(
        title="Error histogram (estimate - true; tails clipped at the 99.5th percentile)",
        xlabel="estimate - true age (years)",
        ylabel="images",
    )
    ax.legend(fontsize=7)
    out.append(("Error histograms", _png(fig)))
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "—" if not math.isfinite(x) else f"{x:.4g}"
    return html.escape(str(x))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def _ci(cell: Mapping[str, Any] | None) -> str:
    """'0.0123 [0.0051, 0.0210] (n 742 subj / 2,968 img)' for a subject-level cell."""
    if not cell or cell.get("value") is None:
        return "—"
    ci = cell.get("ci")
    text = f"{cell['value']:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
    if "n_subjects" in cell:
        text += f" (n {cell['n_subjects']}/{cell['n_images']})"
    return text


def _subject_level_sections(models: Sequence[Mapping[str, Any]], seeds: Sequence[Mapping[str, Any]]) -> list[str]:
    """Headline with subject-level 95% intervals, matched operating points, per-year rates at 18, seeds."""
    out: list[str] = []
    keys = [
        "mae",
        "challenge_25_fpr_14_17",
        "challenge_25_fpr_under_18",
        "challenge_25_fnr_25_plus",
        "under_18_pass_rate_at_21",
        "false_rejection_18_20_at_21",
        "fallback_rate_18",
        "coverage_p95",
    ]
    with_sl = [m for m in models if m.get("subject_level")]
    if not with_sl:
        return out
    out.append(
        "<h2>Headline with subject-level 95% intervals</h2><p>Intervals resample people, not photos; "
        "n = subjects/images in the population.</p>"
    )
    out.append(
        _table(
            ["model", *keys],
            [[m["name"], *(_ci(m["subject_level"]["headline"].get(k)) for k in keys)] for m in with_sl],
        )
    )
    out.append(
        "<h2>Matched operating points</h2><p>Each model at its own cutoff keeping the under-T pass rate "
        "at most 1%: the legal-age (T..T+2) rejection that costs, and the challenge age each needs for a "
        "1% 14-17 false positive rate.</p>"
    )
    rows = []
    for m in with_sl:
        op = m.get("operating") or {}
        row: list[Any] = [m["name"]]
        for T in ("13", "16", "18"):
            cell = (op.get(T) or {}).get("matched", {}).get("0.01") or {}
            buf = cell.get("buffer")
            row.append(("—" if buf is None else f"+{buf:.2f}y: ") + _ci(cell.get("legal_age_rejection_rate")))
        cell18 = (op.get("18") or {}).get("matched", {}).get("0.01") or {}
        k = cell18.get("k_std") or {}
        row.append(("—" if k.get("k") is None else f"k={k['k']:.2f}: ") + _ci(k.get("legal_age_rejection_rate")))
        row.append(_ci((op.get("challenge_age_for_fpr") or {}).get("0.01")))
        rows.append(row)
    out.append(
        _table(
            ["model", "T=13 buffer: rejection", "T=16", "T=18", "T=18, mean-k*std rule", "challenge age for 1% FPR"],
            rows,
        )
    )
    out.append("<h2>Per single year at 18 (buffer 3: estimate ≥ 21)</h2>")
    years = [str(y) for y in range(10, 23)]
    yrows = []
    for m in with_sl:
        by = m["subject_level"]["by_year"].get("18", {}).get("3", {})
        cells = {**by.get("under_age_pass", {}), **by.get("false_rejection", {})}
        yrows.append([m["name"], *(_ci(cells.get(y)) for y in years)])
    out.append(_table(["model", *(f"{y} {'pass' if int(y) < 18 else 'rejected'}" for y in years)], yrows))
    if any(len(r.get("entries", [])) > 1 for r in seeds):
        names = [
            "mae",
            "challenge_25_fpr_14_17",
            "challenge_25_fpr_under_18",
            "under_18_pass_rate_at_21",
            "false_rejection_18_20_at_21",
            "matched_rejection_18_20_at_u18_pass_1pct",
            "challenge_age_for_1pct_fpr_14_17",
            "coverage_p95",
        ]

        def ms(x: Mapping[str, Any]) -> str:
            if x.get("mean") is None:
                return "—"
            return f"{x['mean']:.4g}" + (f" ± {x['std']:.2g}" if x.get("std") is not None else "")

        out.append("<h2>Across seeds (mean ± sd)</h2>")
        out.append(
            _table(
                ["model", "seeds", *names],
                [[r["model"], len(r["entries"]), *(ms(r["metrics"][n]) for n in names)] for r in seeds],
            )
        )
    return out


def _belief_coverage_section(name: str, cov: Mapping[str, Any]) -> str:
    """Interval reliability of the fused belief by number of images fused, beside the frame-level one."""
    levels = list(cov["nominal"])
    rows = [["one frame (its own std)", cov["frame"]["images"], *(cov["frame"]["coverage"][lv] for lv in levels)]]
    rows += [
        [f"{n} fused (floor {cov['floor_years']:.2f} y)", cell["subjects"], *(cell["coverage"][lv] for lv in levels)]
        for n, cell in cov["by_fused_count"].items()
        if cell["subjects"]  # a count no subject has enough images for says nothing
    ]
    return (
        f"<h2>Belief interval coverage: {html.escape(name)}</h2><p>Share of people whose true age lies in the "
        "fused belief's central interval; honest means each column stays near its nominal level at every "
        "count.</p>" + _table(["images fused", "n", *(f"nominal {lv}" for lv in levels)], rows)
    )


def _reliability_section(name: str, rel: Mapping[str, Any]) -> str:
    """The decisions' stated P(age >= threshold) against the share of users really that old, per bin."""
    rows = [[f"{b['lo']:.2f}-{b['hi']:.2f}", b["n"], b["mean_p"], b["observed"]] for b in rel["reliability"] if b["n"]]
    return (
        f"<h2>Is P(age &ge; {rel['threshold']:g}) honest? {html.escape(name)}</h2><p>Per bin of the probability "
        "the policy replay's decisions stated, the share of users whose true age was at least the threshold. "
        "In the top bins it must be at least the stated probability: a shortfall there is a wrong ALLOW.</p>"
        + _table(["stated P", "users", "mean stated", "observed"], rows)
    )


def _by_images_section(name: str, by_count: Mapping[str, Any]) -> str:
    """Who the policy ALLOWs as a user's images accumulate: below the threshold, just above it, well above."""

    def cell(g: Mapping[str, Any], key: str) -> str:
        return "—" if g[key] is None else f"{g[key]:.1%}"

    rows = [
        [
            n,
            c["users"],
            f"{c['under']['allowed']}/{c['under']['n']}",
            cell(c["under"], "allowed_share"),
            cell(c["near"], "allowed_share"),
            cell(c["near"], "verification_share"),
            cell(c["above"], "allowed_share"),
            cell(c["above"], "verification_share"),
        ]
        for n, c in by_count.items()
        if c["users"]
    ]
    return (
        f"<h2>Decisions as images accumulate: {html.escape(name)}</h2><p>Each user's first n images fused, "
        "then decided. Below the threshold, ALLOW is the worst outcome; adults within 3 years above it and "
        "those older show what the policy costs them.</p>"
        + _table(
            [
                "images",
                "users",
                "under ALLOWed",
                "under ALLOWed %",
                "near ALLOWed",
                "near verification",
                "above ALLOWed",
                "above verification",
            ],
            rows,
        )
    )


def render_html(
    metrics: Mapping[str, Any], gate_text: str = "", estimates: Mapping[str, Estimates] | None = None
) -> str:
    """`estimates` (model name -> its rows) adds the estimate-vs-true and error histogram figures; the
    rows stay out of metrics.json (they are in predictions.csv)."""
    metrics = _clean(metrics)
    models = metrics["models"]
    ds = metrics["dataset"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>agegate evaluation</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        ".scroll{overflow-x:auto;max-width:100%}pre{white-space:pre-wrap;overflow-wrap:anywhere}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#eee}"
        ".bad{color:#b00}img{max-width:100%;height:auto}</style></head><body>",
        "<h1>agegate evaluation</h1>",
        f"<p>Dataset <code>{html.escape(str(ds.get('manifest')))}</code>"
        f" split <b>{html.escape(str(ds.get('split')))}</b>,"
        f" {ds.get('n_rows')} rows, hash <code>{html.escape(str(ds.get('content_hash')))}</code>."
        f" Generated {html.escape(metrics['generated_at'])}, schema v{metrics['schema_version']}.</p>",
        "<h2>Headline</h2>",
    ]
    rows = []
    for h in metrics["headline"]:
        g = h["largest_mae_gap"]
        gap = (
            "—"
            if not g
            else (
                f"{g['attribute']}: {g['gap']:.3g} [{g['gap_ci'][0]:.3g}, {g['gap_ci'][1]:.3g}]"
                f" ({g['max_group']} vs {g['min_group']}){' significant' if g['significant'] else ''}"
                if g.get("gap_ci")
                else f"{g['attribute']}: {g['gap']:.3g}"
            )
        )
        rows.append(
            [
                h["model"],
                h["mae"],
                h["cs_5"],
                h["under_18_pass_rate_at_18"],
                h["under_18_pass_rate_at_21"],
                h["under_18_pass_rate_at_25"],
                h["false_rejection_18_20_at_18"],
                h["false_rejection_18_20_at_21"],
                h["false_rejection_18_20_at_25"],
                h["fallback_rate_at_18"],
                gap,
            ]
        )
    parts.append(
        _table(
            [
                "model",
                "MAE",
                "CS@5",
                "u18 pass @18",
                "u18 pass @21",
                "u18 pass @25",
                "18-20 rej @18",
                "18-20 rej @21",
                "18-20 rej @25",
                "fallback @18",
                "largest MAE gap [95% CI]",
            ],
            rows,
        )
    )
    parts.extend(_subject_level_sections(models, metrics.get("seed_summary") or []))
    leaks = [(m["name"], m.get("leakage") or {}) for m in models]
    if any(lk.get("leaks") or not lk.get("checked", True) for _, lk in leaks):
        parts.append("<h2>Training-data overlap</h2><ul>")
        for name, lk in leaks:
            if lk.get("leaks"):
                parts.append(
                    f"<li class='bad'><b>{html.escape(name)}</b>: {lk.get('shared_images')} images, "
                    f"{lk.get('shared_subjects')} subjects, generator seeds "
                    f"{html.escape(str(lk.get('shared_generator_seeds')))} shared with its training data; "
                    "evaluated with --force-overlap: these numbers are in-sample.</li>"
                )
            elif not lk.get("checked", True):
                parts.append(f"<li><b>{html.escape(name)}</b>: no training lineage recorded; overlap not checked.</li>")
        parts.append("</ul>")
    if gate_text:
        parts.append(
            "<h2>Release gate</h2><pre style='white-space:pre-wrap;overflow-wrap:anywhere'>"
            f"{html.escape(gate_text)}</pre>"
        )
    parts.append("<h2>Models</h2>")
    parts.append(
        _table(
            [
                "model",
                "version",
                "checkpoint",
                "scored",
                "errors",
                "NLL",
                "cov50",
                "cov80",
                "cov95",
                "C25 FPR 14-17 (NIST)",
                "C25 FPR all <18",
                "COS TPR 13-16",
                "COS FPR 8-12",
                "COS FPR 17-22",
            ],
            [
                [
                    m["name"],
                    m["model_version"],
                    m["checkpoint"],
                    m["n_scored"],
                    m["n_errors"],
                    m["uncertainty"].get("gaussian_nll"),
                    *(m["uncertainty"].get("coverage", {}).get("overall", {}).get(k) for k in ("p50", "p80", "p95")),
                    m["nist"]["challenge_25_fpr_14_17"],
                    m["nist"]["challenge_25_fpr_under_18"],
                    m["nist"]["cos_tpr_13_16"],
                    m["nist"]["cos_fpr_8_12"],
                    m["nist"]["cos_fpr_17_22"],
                ]
                for m in models
            ],
        )
    )
    parts.append("<h2>Accuracy by age band</h2>")
    bands = list(models[0]["accuracy"]["by_age_band"]) if models else []
    parts.append(
        _table(
            ["model", *bands],
            [
                [
                    m["name"],
                    *(
                        f"{_fmt(m['accuracy']['by_age_band'][b]['mae'])} "
                        f"(n={int(m['accuracy']['by_age_band'][b]['n'])})"
                        for b in bands
                    ),
                ]
                for m in models
            ],
        )
    )
    parts.append("<h2>Uncertainty-aware rule (pass when P(age ≥ T) ≥ confidence)</h2>")
    parts.append(
        _table(
            ["model", "T", "confidence", "under-age pass", "T..T+2 rejected", "fallback"],
            [
                [m["name"], T, r["confidence"], r["under_age_pass_rate"], r["false_rejection_rate"], r["fallback_rate"]]
                for m in models
                for T, thr in m["thresholds"].items()
                for r in [thr["uncertainty_rule"]]
            ],
        )
    )
    parts.append("<h2>Significant group gaps</h2>")
    flagged = [
        [
            m["name"],
            f["attribute"],
            f["metric"],
            f["gap"],
            f"[{_fmt(f['gap_ci'][0])}, {_fmt(f['gap_ci'][1])}]" if f.get("gap_ci") else "—",
            f"{f['max_group']} vs {f['min_group']}",
            f["z"],
        ]
        for m in models
        for f in m["significant_gaps"]
    ]
    parts.append(
        _table(["model", "attribute", "metric", "gap", "95% CI", "groups", "z"], flagged)
        if flagged
        else "<p>None (Bonferroni-corrected over every group pair and metric).</p>"
    )
    for m in models:
        if m.get("policy_replay"):
            pr = m["policy_replay"]
            actions = pr["actions"]
            parts.append(
                f"<h2>Policy replay: {html.escape(m['name'])} ({html.escape(str(pr.get('policy_version')))},"
                f" {html.escape(str(pr.get('jurisdiction')))}/{html.escape(str(pr.get('surface')))})</h2>"
            )
            parts.append(
                _table(
                    ["true age band", "n", *actions],
                    [
                        [band, cell["n"], *(cell["rates"].get(a) for a in actions)]
                        for band, cell in pr["by_age_band"].items()
                    ],
                )
            )
            if pr.get("belief_coverage"):
                parts.append(_belief_coverage_section(m["name"], pr["belief_coverage"]))
            if (pr.get("p_at_least_threshold") or {}).get("threshold") is not None:
                parts.append(_reliability_section(m["name"], pr["p_at_least_threshold"]))
            if pr.get("by_images_fused"):
                parts.append(_by_images_section(m["name"], pr["by_images_fused"]))
    for title, uri in _plots(metrics, estimates):
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>")
    parts.append("<p>Full numbers: metrics.json next to this file (schema: docs/evaluation.md).</p></body></html>")
    return "".join(parts)


def write_report_html(
    metrics: Mapping[str, Any], path: str | Path, gate_text: str = "", estimates: Mapping[str, Estimates] | None = None
) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(metrics, gate_text, estimates), encoding="utf-8")
    return p
