#!/usr/bin/env bash
# Install the pinned kustomize into a cache outside the repository (idempotent).
#   deploy/tools/install-kustomize.sh        -> ${AGEGATE_TOOLS_BIN:-~/.cache/agegate/bin}/kustomize
# Built from source with the Go toolchain through the Go module proxy (go.sum-verified), because
# no distribution package is available everywhere. Takes ~30 s on 2 cores with a cold module cache.
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.5.0}"
BIN_DIR="${AGEGATE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/agegate/bin}"
TARGET="$BIN_DIR/kustomize-$KUSTOMIZE_VERSION"

mkdir -p "$BIN_DIR"
if [[ -x "$TARGET" ]]; then
    ln -sf "kustomize-$KUSTOMIZE_VERSION" "$BIN_DIR/kustomize"
    echo "kustomize $KUSTOMIZE_VERSION already installed: $BIN_DIR/kustomize"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: Go (>= 1.22) is needed to install kustomize; install it from https://go.dev/dl/" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# GOFLAGS=-mod=mod is not needed: `go install pkg@version` ignores any surrounding go.mod.
GOBIN="$work" CGO_ENABLED=0 go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
install -m 0755 "$work/kustomize" "$TARGET"
ln -sf "kustomize-$KUSTOMIZE_VERSION" "$BIN_DIR/kustomize"
echo "installed kustomize $KUSTOMIZE_VERSION: $BIN_DIR/kustomize"
