"""`agegate eval`: score models side by side on one dataset, write metrics.json and report.html,
optionally replay a policy over the estimates and apply a release gate.

    agegate eval --model REF_CKPT --model CANDIDATE_CKPT --data MANIFEST --out DIR \
        [--split test] [--policy FILE] [--gate FILE] [--baseline OLD/metrics.json] [--expect-hash H]

With --gate, the first --model (or the first model of --baseline) is the reference and every other
model is a candidate; the exit status is 1 when any candidate violates a rule, each violation named on
stderr, so the command is a CI step. Exit 2: unusable input (manifest hash mismatch, bad gate file).

`agegate eval --online ...` runs the online-metrics consumer instead (stream/tools/online_metrics.py).

This module lives in `stream` because the policy replay needs the policy engine; the metric code
itself is `model.evaluation` (which never imports `stream`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.evaluation.metrics import AGE_BANDS, DEFAULT_CONFIDENCE, Estimates, band_label
from stream.core.belief import ErrorFloor
from stream.core.belief_coverage import FUSED_COUNTS, belief_coverage, fuse_images, probability_reliability
from stream.core.policy import Action, Decision, Policy, PolicyEvent, decide, load_policy

log = logging.getLogger(__name__)

EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.evaluation.fairness import DEFAULT_BOOTSTRAP, DEFAULT_MIN_CELL_SIZE

    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]CKPT[,CKPT...]",
        help="checkpoint(s) to evaluate; NAME=C1,C2,... gives several seeds of one model (mean and "
        "spread reported); repeat for side by side (the first model is the gate's reference)",
    )
    parser.add_argument("--name", action="append", default=[], help="display name per --model, in order")
    parser.add_argument("--data", metavar="MANIFEST", help="dataset manifest (.csv/.jsonl)")
    parser.add_argument("--split", default="test", help="manifest split to evaluate (default: test)")
    parser.add_argument("--out", metavar="DIR", help="output folder for metrics.json and report.html")
    parser.add_argument("--policy", metavar="FILE", help="policy file to replay over the estimates")
    parser.add_argument(
        "--jurisdiction",
        default="",
        help="jurisdiction for the policy replay (default: the policy's default jurisdiction)",
    )
    parser.add_argument("--surface", default="", help="surface for the policy replay (default: adult_content)")
    parser.add_argument(
        "--gate",
        metavar="FILE",
        nargs="?",
        const="default",
        help="release gate TOML (bare --gate: model/evaluation/default_gate.toml)",
    )
    parser.add_argument(
        "--baseline",
        metavar="METRICS_JSON",
        help="earlier metrics.json to compare against; refused unless its dataset hash matches",
    )
    parser.add_argument("--expect-hash", default="", help="refuse to run unless the manifest's content hash is this")
    parser.add_argument(
        "--device", default="cpu", choices=("auto", "cpu", "cuda"), help="inference device (default cpu)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: torch default)")
    parser.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help="confidence of the uncertainty-aware rule (pass when P(age>=T) >= this)",
    )
    parser.add_argument(
        "--min-cell-size",
        type=int,
        default=DEFAULT_MIN_CELL_SIZE,
        help="groups with fewer subjects than this are marked insufficient",
    )
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="subject-level bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N rows of the split (smoke runs)")
    parser.add_argument(
        "--force-overlap",
        action="store_true",
        help="evaluate even when the data shares images, subjects or a generator seed with a "
        "model's training data (the report then says so)",
    )
    parser.add_argument(
        "--online", action="store_true", help="run the online-metrics consumer instead (stream/tools/online_metrics.py)"
    )
    from stream.tools.online_metrics import add_arguments as add_online

    add_online(parser.add_argument_group("online metrics (with --online)"))


def parse_model_specs(values: Sequence[str], names: Sequence[str]) -> list[tuple[str | None, list[str]]]:
    """`--model` values -> [(name or None, [checkpoints])], merging repeated `NAME=` of one name.

    `NAME=C1,C2` names a model with several seed checkpoints; a bare `CKPT` is one checkpoint named by
    the matching `--name` (or its model version later). A part before `=` containing a path separator
    is not a name (a path may contain `=`)."""
    groups: dict[str, list[str]] = {}
    out: list[tuple[str | None, list[str]]] = []
    bare = 0
    for v in values:
        head, sep, tail = v.partition("=")
        if sep and head and "/" not in head and tail:
            ckpts = [c for c in tail.split(",") if c]
            if head in groups:
                groups[head].extend(ckpts)
            else:
                groups[head] = ckpts
                out.append((head, groups[head]))
            continue
        name = names[bare] if bare < len(names) else None
        bare += 1
        out.append((name, [v]))
    return out


def _seed_of(ckpt: str, index: int) -> str:
    from model.checkpoint import read_meta
    from model.errors import CheckpointError

    try:
        seed = read_meta(ckpt).extra.get("settings", {}).get("seed")
    except (CheckpointError, OSError, ValueError):  # unreadable (or a test stand-in): named by position
        seed = None
    return f"s{seed}" if isinstance(seed, int) else f"#{index + 1}"


def _default_name(ckpt: str, version: str, used: set[str]) -> str:
    base = version or Path(ckpt).stem
    name, i = base, 2
    while name in used:
        name, i = f"{base}#{i}", i + 1
    return name


DEFAULT_REPLAY_SURFACE = "adult_content"  # the 18+ surface: the threshold the headline table is about


def replay_policy(
    est: Estimates,
    policy_path: str | None,
    *,
    floor: ErrorFloor | float,
    jurisdiction: str = "",
    surface: str = "",
    model_version: str = "",
    now: float = 1.7e9,
) -> dict[str, Any]:
    """Run the real policy engine over the estimates; action rates by true-age band.

    Each subject is a user: their frames are fused into one belief with the belief module's own
    `fuse` (each image its own event, one minute apart, with the model's error `floor`) and the
    policy decides once, as the worker would after seeing those photos. Rows without a subject id
    are users of one frame (which the policy's `min_observations` may keep from ALLOW). The
    user's true age is the mean of their rows' ages. `now` is fixed so a replay is reproducible.
    `by_images_fused` repeats the decision on each user's first n images (FUSED_COUNTS): who was
    ALLOWed below the threshold and how adults fared, as uploads accumulate.
    """
    policy = load_policy(policy_path)
    event = PolicyEvent(
        jurisdiction=jurisdiction or policy.default_jurisdiction,
        surface=surface or DEFAULT_REPLAY_SURFACE,
        event_time=now,
    )
    users: dict[str, list[int]] = {}
    for i in range(len(est)):
        key = str(est.subject_id[i]) if est.subject_id is not None else f"row-{i}"
        users.setdefault(key, []).append(i)

    def decide_on(user: str, idx: list[int]) -> tuple[Decision, float]:
        """The decision on these images of one user, and the user's true age over them."""
        decision = _decide_user(est, user, idx, floor, event, policy, model_version, now)
        return decision, float(sum(est.true_age[i] for i in idx) / len(idx))

    actions = [a.value for a in Action]
    bands = [band_label(lo, hi) for lo, hi in AGE_BANDS]
    counts: dict[str, dict[str, int]] = {b: dict.fromkeys(actions, 0) for b in bands}
    reasons: dict[str, int] = {}
    judged: list[tuple[float, bool]] = []  # (stated P(age >= threshold), true age >= threshold)
    threshold: float | None = None
    for user, idx in users.items():
        decision, age = decide_on(user, idx)
        for r in decision.reason_codes:
            reasons[r] = reasons.get(r, 0) + 1
        p_stated, threshold = decision.evidence.p_at_least_threshold, decision.evidence.threshold
        if p_stated is not None and threshold is not None:
            judged.append((p_stated, age >= threshold))
        for (lo, hi), band in zip(AGE_BANDS, bands, strict=True):
            if lo <= age < hi:
                counts[band][decision.action.value] += 1
    by_band = {}
    for band, c in counts.items():
        n = sum(c.values())
        by_band[band] = {"n": n, "rates": {a: (v / n if n else None) for a, v in c.items()}}
    totals = {a: sum(c[a] for c in counts.values()) for a in actions}
    n_users = sum(totals.values())
    by_count = {
        str(n): _outcomes([decide_on(user, idx[:n]) for user, idx in users.items() if len(idx) >= n])
        for n in FUSED_COUNTS
    }
    return {
        "policy_file": str(policy_path) if policy_path else "(built-in default)",
        "policy_version": policy.version,
        "jurisdiction": event.jurisdiction,
        "surface": event.surface,
        "users": n_users,
        "actions": actions,
        "overall": {a: (v / n_users if n_users else None) for a, v in totals.items()},
        "reason_codes": dict(sorted(reasons.items())),
        "by_age_band": by_band,
        # The decisions' own P(age >= threshold) against the truth, per bin of what they stated.
        "p_at_least_threshold": {"threshold": threshold, "reliability": probability_reliability(judged)},
        "by_images_fused": by_count,
    }


# Users "near" the threshold: within this many years above it (where a model that cannot tell 18
# from 21 sends them to verification); "above": older.
NEAR_THRESHOLD_YEARS = 3.0


def _decide_user(
    est: Estimates,
    user: str,
    idx: list[int],
    floor: ErrorFloor | float,
    event: PolicyEvent,
    policy: Policy,
    model_version: str,
    now: float,
) -> Decision:
    """Fuse these images of one user (each its own event, a minute apart) and decide, as the worker would."""
    frames = [(float(est.mean[i]), float(est.std[i]) if math.isfinite(est.std[i]) else 3.0) for i in idx]
    belief = fuse_images(user, frames, floor, now=now, half_life_s=policy.half_life_s, model_version=model_version)
    return decide(belief, event, policy, now=now)


def _outcomes(decided: list[tuple[Decision, float]]) -> dict[str, Any]:
    """Users below the threshold ALLOWed; users near and well above it ALLOWed or sent to verification."""
    groups: dict[str, list[Action]] = {"under": [], "near": [], "above": []}
    for decision, age in decided:
        t = decision.evidence.threshold
        if t is None:
            continue
        group = "under" if age < t else ("near" if age < t + NEAR_THRESHOLD_YEARS else "above")
        groups[group].append(decision.action)

    def share(acts: list[Action], action: Action) -> float | None:
        return sum(a is action for a in acts) / len(acts) if acts else None

    return {
        "users": len(decided),
        **{
            g: {
                "n": len(acts),
                "allowed": sum(a is Action.ALLOW for a in acts),
                "allowed_share": share(acts, Action.ALLOW),
                "verification_share": share(acts, Action.REQUIRE_VERIFICATION),
            }
            for g, acts in groups.items()
        },
    }


def subject_images(est: Estimates) -> dict[str, list[tuple[float, float, float]]]:
    """Each subject's scored images as (true age, mean, std), in manifest order (rows without a
    subject id or without a finite estimate are left out)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    if est.subject_id is None:
        return out
    for i in range(len(est)):
        m, s = float(est.mean[i]), float(est.std[i])
        if math.isfinite(m) and math.isfinite(s) and s > 0:
            out.setdefault(str(est.subject_id[i]), []).append((float(est.true_age[i]), m, s))
    return out


def _load_engine(ckpt: str, device: str, threads: int) -> Any:
    from model.engine import InferenceEngine

    return InferenceEngine.from_checkpoint(ckpt, device=device, threads=threads)


def run(args: argparse.Namespace) -> int:
    if args.online:
        from stream.tools.online_metrics import run as run_online

        return run_online(args)
    if not args.model or not args.data or not args.out:
        print("agegate eval: --model, --data and --out are required (or --online)", file=sys.stderr)
        return EXIT_BAD_INPUT
    from model.data.manifest import load_manifest
    from model.evaluation.gate import GateFileError
    from model.evaluation.predictions import FILENAME, PredictionsError, read_predictions
    from model.evaluation.report import (
        DatasetMismatchError,
        build_metrics,
        model_metrics,
    )
    from model.evaluation.scoring import score_rows
    from model.evaluation.seeds import seed_summary

    manifest = load_manifest(args.data)
    data_hash = manifest.content_hash
    try:
        baseline, gate = _references(args, data_hash)
    except (DatasetMismatchError, GateFileError) as exc:
        print(f"agegate eval: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    rows = manifest.split(args.split)
    if args.limit:
        rows = rows[: args.limit]
    if not rows:
        print(f"agegate eval: split {args.split!r} of {args.data} has no rows", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = {
        "split": args.split,
        "confidence": args.confidence,
        "min_cell_size": args.min_cell_size,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "limit": args.limit,
        "policy": args.policy,
        "gate": args.gate,
        "force_overlap": args.force_overlap,
    }
    specs = parse_model_specs(args.model, args.name)
    leakage = check_leakage(manifest, rows, [c for _, ckpts in specs for c in ckpts], args.force_overlap)
    if leakage is None:
        return EXIT_BAD_INPUT
    baseline_est = None
    if baseline is not None and gate is not None:
        try:
            ref_name = baseline["models"][0]["name"]
            baseline_est = read_predictions(Path(args.baseline).parent / FILENAME, rows, ref_name)[1]
        except PredictionsError as exc:
            print(f"agegate eval: the paired gate needs the baseline's row-level estimates: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    models: list[dict[str, Any]] = []
    scored: list[tuple[str, Estimates]] = []
    used: set[str] = set()
    groups: dict[str, list[dict[str, Any]]] = {}
    jobs = [(group, ckpt, k, len(ckpts)) for group, ckpts in specs for k, ckpt in enumerate(ckpts)]
    for group, ckpt, k, n_seeds in jobs:
        engine = _load_engine(ckpt, args.device, args.threads)
        try:
            started = time.perf_counter()
            est = score_rows(engine, manifest, rows)
            elapsed = time.perf_counter() - started
        finally:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
        base = group or _default_name(ckpt, engine.model_version, used)
        name = f"{base}@{_seed_of(ckpt, k)}" if n_seeds > 1 else base
        if name in used:
            name = _default_name(name, "", used)
        used.add(name)
        log.info("scored %s: %d rows, %d errors, %.1fs", name, len(est), est.n_errors, elapsed)
        entry = model_metrics(
            est,
            name=name,
            checkpoint=str(ckpt),
            model_version=engine.model_version,
            confidence=args.confidence,
            min_cell_size=args.min_cell_size,
            n_boot=args.bootstrap,
            seed=args.seed,
        )
        entry["scoring_seconds"] = elapsed
        if args.policy is not None:
            # `--policy default` replays the built-in policy file.
            floor = ErrorFloor(engine.uncertainty.floor_years, engine.uncertainty.floor_ratio)
            entry["policy_replay"] = replay_policy(
                est,
                None if args.policy == "default" else args.policy,
                floor=floor,
                jurisdiction=args.jurisdiction,
                surface=args.surface,
                model_version=engine.model_version,
            )
            entry["policy_replay"]["belief_coverage"] = belief_coverage(subject_images(est), floor=floor)
        entry["group"] = base
        entry["leakage"] = leakage[ckpt]
        models.append(entry)
        scored.append((name, est))
        groups.setdefault(base, []).append(entry)
    dataset = {
        "manifest": str(args.data),
        "content_hash": data_hash,
        "split": args.split,
        "n_rows": len(rows),
        "attributes": manifest.attribute_names(),
    }
    metrics = build_metrics(models, dataset=dataset, config=config)
    metrics["seed_summary"] = seed_summary(groups)

    gate_text, failed = "", False
    if gate is not None:
        gate_text, metrics["gate"] = _gate_section(gate, metrics, baseline, scored, baseline_est)
        failed = not metrics["gate"]["passed"]
    _write_outputs(
        Path(args.out),
        metrics,
        scored,
        several_seeds=any(len(g) > 1 for g in groups.values()),
        gate_text=gate_text,
        failed=failed,
    )
    return EXIT_GATE_FAILED if failed else 0


def _write_outputs(
    out: Path,
    metrics: dict[str, Any],
    scored: list[tuple[str, Estimates]],
    *,
    several_seeds: bool,
    gate_text: str,
    failed: bool,
) -> None:
    """metrics.json, the row-level predictions and report.html; the headline (and gate) on the terminal."""
    from model.evaluation.predictions import FILENAME, write_predictions
    from model.evaluation.report import write_metrics_json, write_report_html
    from model.evaluation.seeds import format_seed_summary

    write_metrics_json(metrics, out / "metrics.json")
    write_predictions(out / FILENAME, scored)
    write_report_html(metrics, out / "report.html", gate_text, estimates=dict(scored))
    print(_headline_text(metrics["headline"]))
    if several_seeds:
        print("across seeds (mean ± sd):")
        print(format_seed_summary(metrics["seed_summary"]))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    if gate_text:
        print(gate_text, file=sys.stderr if failed else sys.stdout)


def _references(args: argparse.Namespace, data_hash: str) -> tuple[dict[str, Any] | None, Any]:
    """The baseline metrics and the gate named on the command line, checked against this dataset first."""
    from model.evaluation.gate import DEFAULT_GATE, load_gate
    from model.evaluation.report import DatasetMismatchError, load_metrics_json, require_same_dataset

    if args.expect_hash:
        require_same_dataset(args.expect_hash, data_hash, "--expect-hash")
    baseline = load_metrics_json(args.baseline) if args.baseline else None
    if baseline is not None:
        require_same_dataset(baseline["dataset"]["content_hash"], data_hash, args.baseline)
        if baseline["dataset"].get("split") != args.split:
            raise DatasetMismatchError(
                f"{args.baseline} was computed on split {baseline['dataset'].get('split')!r}, not {args.split!r}"
            )
    gate = load_gate(DEFAULT_GATE if args.gate == "default" else args.gate) if args.gate else None
    return baseline, gate


def _gate_section(
    gate: Any,
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None,
    scored: list[tuple[str, Estimates]],
    baseline_est: Estimates | None,
) -> tuple[str, dict[str, Any]]:
    """The gate's printed verdict and its metrics.json section."""
    from model.evaluation.gate import format_result

    results = run_gate(gate, metrics, baseline, scored, baseline_est)
    text = "\n".join(format_result(r) for r in results) or "gate: nothing to compare (one model, no --baseline)"
    section = {
        "file": str(gate.source),
        "confidence": gate.confidence,
        "passed": all(r.passed for r in results),
        "results": [
            {
                "candidate": r.candidate,
                "reference": r.reference,
                "passed": r.passed,
                "violations": [
                    {
                        "rule": c.rule,
                        "metric": c.metric,
                        "reference": c.reference,
                        "candidate": c.candidate,
                        "allowed": c.allowed,
                        "reason": c.reason,
                        "lower_bound": c.lower_bound,
                    }
                    for c in r.violations
                ],
            }
            for r in results
        ],
    }
    return text, section


def check_leakage(
    manifest: Any, rows: Sequence[Any], checkpoints: Sequence[str], force: bool
) -> dict[str, dict[str, Any]] | None:
    """Per checkpoint, what the evaluated rows share with its training data. None (after printing why)
    when something is shared and `force` is off: an in-sample score must not pass for a release number."""
    from model.errors import CheckpointError
    from model.evaluation.leakage import describe, fingerprints, lineage_of, overlap

    bench = fingerprints(manifest, rows)
    out: dict[str, dict[str, Any]] = {}
    refused = False
    for ckpt in checkpoints:
        try:
            lineage = lineage_of(ckpt)
        except (CheckpointError, OSError, ValueError):
            lineage = None  # unreadable here (a stand-in in tests); the engine load reports real problems
        found = overlap(lineage, bench)
        found["forced"] = bool(found["leaks"] and force)
        out[ckpt] = found
        if not found["checked"]:
            log.warning("%s records no training lineage: overlap with the benchmark cannot be checked", ckpt)
        elif found["leaks"]:
            verdict = "evaluating anyway (--force-overlap)" if force else "refused; pass --force-overlap to override"
            print(f"agegate eval: {ckpt}: {describe(found)}: {verdict}", file=sys.stderr)
            refused = refused or not force
    return None if refused else out


def run_gate(
    gate: Any,
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    scored: Sequence[tuple[str, Estimates]],
    baseline_est: Estimates | None = None,
) -> list[Any]:
    """Reference: the baseline report's first model when given, else this run's first model. Each
    candidate is paired with the reference on the rows both scored (evaluate_paired_gate)."""
    from model.evaluation.gate import evaluate_paired_gate

    models = list(metrics["models"])
    pairs = list(zip(models, (e for _, e in scored), strict=True))
    if baseline is not None:
        if baseline_est is None:
            raise ValueError("a baseline comparison needs the baseline's estimates")
        references = [(baseline["models"][0], baseline_est)]
        candidates = pairs
    else:
        ref_group = models[0].get("group", models[0]["name"]) if models else None
        references = [p for p in pairs if p[0].get("group", p[0]["name"]) == ref_group]
        candidates = [p for p in pairs if p[0].get("group", p[0]["name"]) != ref_group]
        if not candidates:
            return []
    # Several seeds: the k-th seed of a candidate model is judged against the k-th of the reference.
    out = []
    seen: dict[str, int] = {}
    for entry, est in candidates:
        g = entry.get("group", entry["name"])
        k = seen.get(g, 0)
        seen[g] = k + 1
        ref_entry, ref_est = references[k % len(references)]
        out.append(evaluate_paired_gate(gate, ref_est, est, ref_entry, entry, ref_entry["name"], entry["name"]))
    return out


def _headline_text(rows: Sequence[Mapping[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"

    lines = ["model | MAE | CS@5 | u18 pass @18/@21/@25 | 18-20 rejected @18/@21/@25 | fallback @18 | largest MAE gap"]
    for h in rows:
        g = h["largest_mae_gap"]
        gap = "-" if not g else f"{g['attribute']} {f(g['gap'])} CI {[round(x, 3) for x in g['gap_ci'] or []]}"
        lines.append(
            f"{h['model']} | {f(h['mae'])} | {f(h['cs_5'])} | {f(h['under_18_pass_rate_at_18'])}/"
            f"{f(h['under_18_pass_rate_at_21'])}/{f(h['under_18_pass_rate_at_25'])} | "
            f"{f(h['false_rejection_18_20_at_18'])}/{f(h['false_rejection_18_20_at_21'])}/"
            f"{f(h['false_rejection_18_20_at_25'])} | {f(h['fallback_rate_at_18'])} | {gap}"
        )
    return "\n".join(lines)
