"""The folder tree is the architecture: an import that crosses a layer the wrong way, or closes a
circle, fails here instead of in review.

Layers (stream/__init__.py says the same in prose):
  base      stream.config, errors, log, metrics, cli: imported by everyone, import no layer
  core      pure logic (belief math, policy): base only
  adapters  Kafka, codec, registry, belief stores: base and core
  pipeline  the steps and their composition: base and core; adapters only in stream.pipeline.assemble
  runners   the driver, worker, replay: base, core, pipeline, adapters
  tools     commands around the pipeline: anything; imported by nobody (the CLI loads them by name)
Every import counts, including ones inside functions and under TYPE_CHECKING: a lazy import hides a
circle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = {"stream", "stream.config", "stream.errors", "stream.log", "stream.metrics", "stream.cli"}
LAYERS = ("core", "adapters", "pipeline", "runners", "tools")
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "core": {"base", "core"},
    "adapters": {"base", "core", "adapters"},
    "pipeline": {"base", "core", "pipeline"},
    "runners": {"base", "core", "pipeline", "adapters", "runners"},
    "tools": {"base", "core", "pipeline", "adapters", "runners", "tools"},
}
WIRING = {"stream.pipeline.assemble"}  # the one pipeline module that may name adapters


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


STREAM = modules("stream")


def imported(path: Path, name: str) -> Iterator[str]:
    """Every module `path` imports, resolved to the most specific module that exists."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in STREAM else base


def layer(name: str) -> str | None:
    if name in BASE:
        return "base"
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "stream" and parts[1] in LAYERS else None


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name, path in STREAM.items():
        g.add_node(name)
        for target in imported(path, name):
            if target.startswith("stream") and target != name:
                g.add_edge(name, target if target in STREAM else target.rpartition(".")[0] or target)
    return g


def test_every_stream_module_sits_in_a_layer() -> None:
    homeless = [name for name in STREAM if layer(name) is None and name.count(".") > 0 and name not in BASE]
    homeless = [n for n in homeless if n not in {f"stream.{layer_}" for layer_ in LAYERS}]
    assert homeless == [], f"modules outside stream/{{{','.join(LAYERS)}}} and the base: {homeless}"


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    wrong = []
    for source, target in edges:
        src, dst = layer(source), layer(target)
        if src is None or dst is None:
            continue
        allowed = ALLOWED[src] | ({"adapters"} if source in WIRING else set())
        if dst not in allowed:
            wrong.append(f"{source} ({src}) imports {target} ({dst})")
    return sorted(wrong)


def test_imports_follow_the_layers() -> None:
    wrong = violations(graph().edges)
    assert wrong == [], "imports against the layer rule:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    circles = [sorted(c) for c in nx.strongly_connected_components(graph()) if len(c) > 1]
    assert circles == [], f"import circles: {circles}"


@pytest.mark.parametrize(
    ("package", "forbidden"), [("model", "stream"), ("bench", "tests"), ("stream", "tests"), ("model", "tests")]
)
def test_package_never_imports(package: str, forbidden: str) -> None:
    found = [
        f"{name} imports {target}"
        for name, path in modules(package).items()
        for target in imported(path, name)
        if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert found == []


def test_the_rule_catches_wrong_directions() -> None:
    """The checker itself: each forbidden direction is reported, the allowed ones are not."""
    bad = [
        ("stream.core.belief", "stream.adapters.codec"),
        ("stream.pipeline.decide", "stream.adapters.codec"),
        ("stream.runners.worker", "stream.tools.demo"),
        ("stream.config", "stream.core.policy"),
        ("stream.adapters.codec", "stream.pipeline.pipeline"),
    ]
    good = [
        ("stream.pipeline.assemble", "stream.adapters.codec"),
        ("stream.runners.worker", "stream.pipeline.pipeline"),
        ("stream.tools.demo", "stream.runners.worker"),
        ("stream.core.policy", "stream.errors"),
    ]
    assert len(violations(bad)) == len(bad)
    assert violations(good) == []
