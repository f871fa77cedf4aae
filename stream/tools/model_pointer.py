"""The deployed model pointer and its append-only history.

The pointer is a kustomize env file (default `deploy/k8s/components/config/model.env`) holding one
line `AGEGATE_MODEL=<path on the model volume>`. The `agegate-env` ConfigMap is generated from it,
so its name carries a content hash: applying a changed pointer rolls the worker pods, which load the
new model at start, and the change is a reviewed, versioned commit like a policy change.

The history (`model-history.jsonl` beside it) records every promotion, refusal and rollback: who,
when, why, from which model to which, and the evidence (gate and shadow results). It is only ever
appended to. Rollback is a stack: each promotion pushes a model, each rollback pops one, so two
rollbacks after two promotions are back at the start. The pointer is written atomically (temp file
+ rename) and only after the history line is flushed, so a crash never leaves a pointer that its
history does not explain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import AgegateError

POINTER_KEY = "AGEGATE_MODEL"
DEFAULT_POINTER = Path("deploy/k8s/components/config/model.env")
HISTORY_NAME = "model-history.jsonl"

_HEADER = (
    "# The model the worker scores with (the agegate-env ConfigMap reads this file). Written by\n"
    "# `agegate model promote` and `agegate model rollback`, which append why to model-history.jsonl\n"
    '# beside it (docs/operations.md, "The improvement loop"). Do not edit by hand.\n'
)


class PointerError(AgegateError):
    """The pointer or its history is missing, malformed, or they disagree."""


@dataclass(frozen=True, slots=True)
class Pointer:
    path: Path

    @property
    def history_path(self) -> Path:
        return self.path.with_name(HISTORY_NAME)

    def read(self) -> str:
        """The model path the deployment reads now."""
        if not self.path.is_file():
            raise PointerError(f"model pointer {self.path} does not exist")
        for line in self.path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == POINTER_KEY and value.strip():
                return value.strip()
        raise PointerError(f"model pointer {self.path} has no {POINTER_KEY}=... line")

    def write(self, model: str, *, revision: int, model_version: str) -> None:
        text = f"{_HEADER}# revision {revision}: {model_version}\n{POINTER_KEY}={model}\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.is_file():
            return []
        out = []
        for n, line in enumerate(self.history_path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise PointerError(f"{self.history_path}:{n}: not JSON: {exc}") from None
        return out

    def append(self, entry: Mapping[str, Any]) -> None:
        """One JSON line, flushed and synced before the caller moves the pointer."""
        with self.history_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def deployed_stack(history: list[dict[str, Any]]) -> list[str]:
    """The models promoted and not rolled back, oldest first (pure: replays the history)."""
    stack: list[str] = []
    for entry in history:
        if entry.get("action") == "promote":
            if not stack and entry.get("previous"):
                stack.append(str(entry["previous"]))
            stack.append(str(entry["model"]))
        elif entry.get("action") == "rollback" and stack:
            stack.pop()
    return stack


def next_revision(history: list[dict[str, Any]]) -> int:
    return 1 + max((int(e.get("revision", 0)) for e in history), default=0)


def check_consistent(pointer: Pointer, history: list[dict[str, Any]]) -> str:
    """The current model; refused when the pointer was changed behind the history's back."""
    current = pointer.read()
    stack = deployed_stack(history)
    if stack and stack[-1] != current:
        raise PointerError(
            f"{pointer.path} names {current} but its history ends at {stack[-1]}: the pointer was edited by hand; "
            "restore it or record the change before promoting or rolling back"
        )
    return current
