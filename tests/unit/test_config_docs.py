"""docs/configuration.md carries the table generated from stream/config.py, never a stale copy."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from stream.config import Settings, reference_table

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "deploy" / "tools" / "gen_config_docs.py"


def gen_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", TOOL)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_docs_are_current() -> None:
    tool = gen_tool()
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert tool.render(doc, reference_table()) == doc, (
        "docs/configuration.md is stale: run python deploy/tools/gen_config_docs.py"
    )


def test_table_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(Settings):
        assert f"| `{f.name}` | `{f.metadata['env']}` |" in doc


def test_render_replaces_only_the_generated_region() -> None:
    tool = gen_tool()
    doc = f"intro\n{tool.BEGIN}\nold table\n{tool.END}\noutro\n"
    assert tool.render(doc, "new table\n") == f"intro\n{tool.BEGIN}\nnew table\n{tool.END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        tool.render("no markers here", "table\n")


def test_check_mode_reports_stale_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = gen_tool()
    stale = tmp_path / "configuration.md"
    stale.write_text(f"# Configuration\n{tool.BEGIN}\n| stale |\n{tool.END}\n")
    monkeypatch.setattr(tool, "DOC", stale)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    assert tool.main(["--check"]) == 1
    assert "| stale |" in stale.read_text()  # --check never writes
    assert tool.main([]) == 0
    assert tool.main(["--check"]) == 0
    assert reference_table() in stale.read_text()
