"""`agegate policy check [FILE]`: validate a policy file and print what it decides with.

Run before a deploy (or in a policy repository's CI): the worker refuses a bad policy at start
(stream/runners/preflight.py), and this shows the same problems without Kafka, Redis or a model,
plus the table a reviewer checks - per jurisdiction and surface, the minimum age, the buffer, the
confidence needed and the action taken on a user below the minimum - and, per surface, what
`required_confidence` governs. It is one number for both sides of the rule (ALLOW needs
P(age >= min_age + buffer) >= c, the under-age action needs P(age < min_age) >= c), so raising it
to allow fewer users also blocks fewer: users whose P(age < min_age) lies between the old and new
value move from BLOCK (or RESTRICT) to REQUIRE_VERIFICATION. Authors tightening a policy usually
expect the opposite, hence a line per surface rather than a sentence in a manual.
"""

from __future__ import annotations

import argparse

from stream.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("check",), help="check: validate FILE and print its thresholds")
    parser.add_argument(
        "file", nargs="?", default=None, help="policy TOML (default: AGEGATE_POLICY, else the packaged policy)"
    )


def policy_table(policy: object) -> str:
    """A plain-text table of every rule of a loaded `Policy`, one row per jurisdiction and surface."""
    from stream.core.policy import Policy

    assert isinstance(policy, Policy)
    header = ("jurisdiction", "surface", "min_age", "buffer", "allow_at", "confidence", "under_age_action")
    rows = [header]
    for jname in sorted(policy.jurisdictions, key=lambda j: (j != policy.default_jurisdiction, j)):
        for surface, rule in sorted(policy.jurisdictions[jname].surfaces.items()):
            rows.append(
                (
                    jname,
                    surface,
                    f"{rule.min_age:g}",
                    f"{rule.buffer_years:g}",
                    f"{rule.min_age + rule.buffer_years:g}",
                    f"{rule.required_confidence:g}",
                    str(rule.under_age_action),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def confidence_notes(policy: object) -> list[str]:
    """One line per jurisdiction and surface: the two bars `required_confidence` sets (see the module doc)."""
    from stream.core.policy import Policy

    assert isinstance(policy, Policy)
    notes = []
    for jname in sorted(policy.jurisdictions, key=lambda j: (j != policy.default_jurisdiction, j)):
        for surface, rule in sorted(policy.jurisdictions[jname].surfaces.items()):
            c, keep = rule.required_confidence, rule.required_confidence - policy.hysteresis_margin
            action = str(rule.under_age_action)
            notes.append(
                f"{jname}/{surface}: required_confidence {c:g} is the bar for ALLOW "
                f"(P(age >= {rule.min_age + rule.buffer_years:g}) >= {c:g}) AND for {action} "
                f"(P(age < {rule.min_age:g}) >= {c:g}; {keep:g} to keep it): raising it moves users from "
                f"{action} to REQUIRE_VERIFICATION too"
            )
    return notes


def run(args: argparse.Namespace) -> int:
    import os

    from stream.core.policy import default_policy_path, load_policy

    path = args.file or os.environ.get("AGEGATE_POLICY") or None
    policy = load_policy(path)  # PolicyError -> one line and exit code 2 (stream/cli.py)
    print(f"policy {path or default_policy_path()}: valid")
    print(
        f"version {policy.version}; default jurisdiction {policy.default_jurisdiction}; "
        f"min_observations {policy.min_observations}; hysteresis_margin {policy.hysteresis_margin:g}; "
        f"half_life_days {policy.half_life_s / 86400:g}"
    )
    print()
    print(policy_table(policy), end="")
    print()
    print("required_confidence governs both actions of a surface:")
    for note in confidence_notes(policy):
        print(f"  {note}")
    return EXIT_OK
