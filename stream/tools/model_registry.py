"""`agegate model promote|rollback|status`: a model reaches production only through the gate and the shadow.

    agegate model promote CANDIDATE --benchmark STD_MANIFEST --feedback FEEDBACK_MANIFEST \
        --reason "why" [--production CKPT] [--deploy-path /models/v7] [--gate FILE] [--out DIR]
    agegate model rollback --reason "why"
    agegate model status

Promotion runs three checks and moves the pointer only when all pass:
1. the release gate (`agegate eval --gate`, the same code and gate file) of the candidate against the
   production model on the standard benchmark's test split;
2. the same gate on the feedback manifest's held-out (test) split: the platform's own traffic;
3. the candidate's shadow records over the configured window (AGEGATE_PROMOTE_SHADOW_*): enough
   events, and action changes, new ALLOWs and estimate differences within bounds.
Every outcome, refused or promoted, is appended to the history with who, when, why and the
evidence; the eval reports are kept under --out. The pointer and history: stream/tools/model_pointer.py.
Exit 0 promoted (or rolled back), 1 refused, 2 unusable input.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from stream.tools.model_pointer import (
    DEFAULT_POINTER,
    Pointer,
    PointerError,
    check_consistent,
    deployed_stack,
    next_revision,
)
from stream.tools.shadow_window import ShadowBounds, ShadowSummary, summarise, violations

# (candidate model version, since, until) -> records (timestamp s, value) of the shadow topic
ShadowSource = Callable[[str, float], tuple[float, float, Any]]


@dataclass(slots=True)
class GateOutcome:
    dataset: str  # "benchmark" or "feedback"
    manifest: str
    exit_code: int  # agegate eval's: 0 passed, 1 a rule violated, 2 unusable input
    output: str  # what agegate eval printed (headline and the gate's verdict)
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="model_command",
        metavar="ACTION",
        required=True,
        help="promote a candidate, roll back, or show the deployed model",
    )
    promote = sub.add_parser("promote", help="gate, shadow-check and deploy a candidate checkpoint")
    promote.add_argument("candidate", metavar="CANDIDATE", help="candidate checkpoint (.safetensors or run folder)")
    promote.add_argument(
        "--benchmark",
        required=True,
        metavar="MANIFEST",
        help="the standard benchmark manifest (its test split is gated)",
    )
    promote.add_argument(
        "--feedback",
        required=True,
        metavar="MANIFEST",
        help="manifest from `agegate datasets from-feedback` (its held-out test split is gated)",
    )
    promote.add_argument(
        "--production", default="", help="the production checkpoint to compare with (default: what the pointer names)"
    )
    promote.add_argument(
        "--deploy-path", default="", help="the path the worker pods will read (default: CANDIDATE as given)"
    )
    promote.add_argument("--gate", default="default", help="release gate TOML (default: the packaged gate)")
    promote.add_argument("--out", default="", help="folder for the eval reports (default: promotions/<time>)")
    promote.add_argument("--bootstrap", type=int, default=1000, help="subject bootstrap replicates of the gate")
    promote.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="inference device")
    promote.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: torch default)")
    _common(promote)
    rollback = sub.add_parser("rollback", help="restore the model deployed before the current one")
    _common(rollback)
    status = sub.add_parser("status", help="print the deployed model and the recent history")
    status.add_argument("--pointer", default=str(DEFAULT_POINTER), help="the model pointer env file")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (recorded in the history)")
    p.add_argument("--by", default="", help="who (default: the login name)")
    p.add_argument("--pointer", default=str(DEFAULT_POINTER), help="the model pointer env file")


def _who(given: str) -> str:
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now_iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def run_gate(
    dataset: str,
    manifest: str,
    production: str,
    candidate: str,
    out: Path,
    *,
    gate: str,
    bootstrap: int,
    device: str,
    threads: int,
) -> GateOutcome:
    """`agegate eval --gate` on the manifest's test split, production first (the gate's reference)."""
    from stream.tools import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            production,
            "--model",
            candidate,
            "--name",
            "production",
            "--name",
            "candidate",
            "--data",
            manifest,
            "--split",
            "test",
            "--out",
            str(out),
            "--gate",
            gate,
            "--bootstrap",
            str(bootstrap),
            "--device",
            device,
            "--threads",
            str(threads),
        ]
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = evaluate.run(args)
    found: list[str] = []
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        gate_doc = json.loads(metrics_path.read_text()).get("gate", {})
        found = [
            f"[{v['rule']}] {v['metric']}: {v['reason']}"
            for r in gate_doc.get("results", [])
            for v in r.get("violations", [])
        ]
    return GateOutcome(dataset, manifest, code, buf.getvalue(), found)


def promote(
    pointer: Pointer,
    candidate: str,
    *,
    benchmark: str,
    feedback: str,
    reason: str,
    who: str,
    shadow_source: ShadowSource,
    bounds: ShadowBounds,
    out: Path,
    production: str = "",
    deploy_path: str = "",
    gate: str = "default",
    bootstrap: int = 1000,
    device: str = "cpu",
    threads: int = 0,
    now: float | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[bool, dict[str, Any]]:
    """Run the checks, append the outcome to the history and, when all pass, move the pointer."""
    from model.checkpoint import read_meta
    from stream.pipeline.assemble import checkpoint_file

    history = pointer.history()
    current = check_consistent(pointer, history)
    target = deploy_path or candidate
    if target == current:
        raise PointerError(f"{target} is already the deployed model")
    production_file = str(checkpoint_file(production or current))
    candidate_file = str(checkpoint_file(candidate))
    cand_meta, prod_meta = read_meta(candidate_file), read_meta(production_file)
    cand_version = cand_meta.config.model_version
    gates = [
        run_gate(
            name,
            manifest,
            production_file,
            candidate_file,
            out / name,
            gate=gate,
            bootstrap=bootstrap,
            device=device,
            threads=threads,
        )
        for name, manifest in (("benchmark", benchmark), ("feedback", feedback))
    ]
    since, until, records = shadow_source(cand_version, bounds.window_s)
    shadow: ShadowSummary = summarise(records, cand_version, since, until)
    shadow_problems = violations(shadow, bounds)
    reasons = [
        f"gate on {g.dataset} ({g.manifest}): "
        + ("unusable input (exit 2)" if g.exit_code == 2 else "; ".join(g.violations) or f"exit {g.exit_code}")
        for g in gates
        if not g.passed
    ]
    reasons += shadow_problems
    accepted = not reasons
    t = time.time() if now is None else now
    entry: dict[str, Any] = {
        "revision": next_revision(history),
        "action": "promote" if accepted else "refused",
        "at": _now_iso(t),
        "by": who,
        "reason": reason,
        "model": target,
        "model_version": cand_version,
        "weights_sha256": cand_meta.weights_sha256,
        "previous": current,
        "previous_version": prod_meta.config.model_version,
        "evidence": {
            "gates": [
                {
                    "dataset": g.dataset,
                    "manifest": g.manifest,
                    "passed": g.passed,
                    "exit_code": g.exit_code,
                    "report": str(out / g.dataset / "metrics.json"),
                    "violations": g.violations,
                }
                for g in gates
            ],
            "shadow": {
                **shadow.to_dict(),
                "bounds": {
                    "window_s": bounds.window_s,
                    "min_events": bounds.min_events,
                    "max_action_change_rate": bounds.max_action_change_rate,
                    "max_new_allow_rate": bounds.max_new_allow_rate,
                    "max_mean_abs_diff_years": bounds.max_mean_abs_diff_years,
                },
                "violations": shadow_problems,
            },
        },
        "refused_because": reasons,
    }
    for g in gates:
        echo(f"--- gate on {g.dataset} ({g.manifest}) ---\n{g.output.rstrip()}")
    echo(
        f"--- shadow ({cand_version}, last {bounds.window_s / 3600:g} h) ---\n"
        f"events {shadow.events}, action changes {shadow.action_changes} ({_pct(shadow.action_change_rate)}), "
        f"new ALLOW {shadow.new_allows} ({_pct(shadow.new_allow_rate)}), mean |diff| "
        f"{'-' if shadow.mean_abs_diff_years is None else f'{shadow.mean_abs_diff_years:.2f}'} years; "
        + ("within bounds" if not shadow_problems else "; ".join(shadow_problems))
    )
    pointer.append(entry)
    if accepted:
        pointer.write(target, revision=entry["revision"], model_version=cand_version)
        echo(f"PROMOTED {cand_version} -> {pointer.path} (revision {entry['revision']}); previous {current}")
    else:
        echo(f"REFUSED {cand_version}:\n  " + "\n  ".join(reasons))
    return accepted, entry


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def rollback(pointer: Pointer, *, reason: str, who: str, now: float | None = None) -> dict[str, Any]:
    """Point back at the model deployed before the current one (the history is a stack)."""
    history = pointer.history()
    current = check_consistent(pointer, history)
    stack = deployed_stack(history)
    if len(stack) < 2:
        raise PointerError(f"{pointer.path}: no earlier promoted model to roll back to")
    target = stack[-2]
    version = next(
        (
            str(e.get("model_version", ""))
            for e in reversed(history)
            if e.get("action") == "promote" and e.get("model") == target
        ),
        "",
    )
    if not version:
        version = next(
            (
                str(e.get("previous_version", ""))
                for e in history
                if e.get("action") == "promote" and e.get("previous") == target
            ),
            "",
        )
    t = time.time() if now is None else now
    revision = next_revision(history)
    entry: dict[str, Any] = {
        "revision": revision,
        "action": "rollback",
        "at": _now_iso(t),
        "by": who,
        "reason": reason,
        "model": target,
        "model_version": version,
        "previous": current,
    }
    pointer.append(entry)
    pointer.write(target, revision=revision, model_version=version or target)
    return entry


def kafka_shadow_source(settings: Any) -> ShadowSource:
    """The shadow records of the configured shadow topic (the candidate's are picked by `summarise`)."""
    from stream.pipeline.assemble import shadow_topic
    from stream.tools.shadow_window import read_window

    def source(model_version: str, window_s: float) -> tuple[float, float, Any]:
        return read_window(settings, shadow_topic(settings), window_s=window_s)

    return source


def run(args: argparse.Namespace) -> int:
    pointer = Pointer(Path(args.pointer))
    if args.model_command == "status":
        return _status(pointer)
    try:
        if args.model_command == "rollback":
            entry = rollback(pointer, reason=args.reason, who=_who(args.by))
            print(
                f"ROLLED BACK to {entry['model']} ({entry['model_version'] or 'version unknown'}), revision "
                f"{entry['revision']}; was {entry['previous']}"
            )
            return EXIT_OK
        from stream.config import load_settings

        settings = load_settings()
        out = Path(args.out or f"promotions/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        accepted, _ = promote(
            pointer,
            args.candidate,
            benchmark=args.benchmark,
            feedback=args.feedback,
            reason=args.reason,
            who=_who(args.by),
            shadow_source=kafka_shadow_source(settings),
            bounds=ShadowBounds.from_settings(settings),
            out=out,
            production=args.production,
            deploy_path=args.deploy_path,
            gate=args.gate,
            bootstrap=args.bootstrap,
            device=args.device,
            threads=args.threads,
        )
    except PointerError as exc:
        print(f"agegate model {args.model_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if accepted else EXIT_FAILED


def _status(pointer: Pointer) -> int:
    history = pointer.history()
    print(f"deployed: {pointer.read()}  ({pointer.path})")
    for e in history[-10:]:
        print(
            f"  r{e.get('revision')} {e.get('at')} {e.get('action'):<8} {e.get('model_version', '')} "
            f"by {e.get('by')}: {e.get('reason')}"
        )
    return EXIT_OK if os.path.exists(pointer.path) else EXIT_USAGE
