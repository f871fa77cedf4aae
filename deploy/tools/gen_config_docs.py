"""Regenerate the settings table in docs/configuration.md from stream/config.py.

    python deploy/tools/gen_config_docs.py          # rewrite the table in place
    python deploy/tools/gen_config_docs.py --check  # exit 1 when the docs are stale (CI)

Only the text between the two markers is generated; the prose around it is written by hand.
tests/unit/test_config_docs.py fails when the table is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: settings table (python deploy/tools/gen_config_docs.py) -->"
END = "<!-- END GENERATED: settings table -->"


def render(doc_text: str, table: str) -> str:
    """doc_text with the region between the markers replaced by table."""
    start, end = doc_text.find(BEGIN), doc_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC}: markers missing or out of order; expected {BEGIN!r} then {END!r}")
    return doc_text[: start + len(BEGIN)] + "\n" + table + doc_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail instead of writing when the docs are stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from stream.config import reference_table

    current = DOC.read_text()
    wanted = render(current, reference_table())
    if current == wanted:
        return 0
    if args.check:
        print(f"{DOC.relative_to(ROOT)} is stale: run python deploy/tools/gen_config_docs.py", file=sys.stderr)
        return 1
    DOC.write_text(wanted)
    print(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
