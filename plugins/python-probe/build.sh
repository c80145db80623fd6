#!/usr/bin/env bash
# Builds the Python probe plugin into a WebAssembly component.
#
#   ./build.sh                 -> <repo>/target/wasm32-wasip2/plugin/python_probe.wasm
#   ./build.sh out/x.wasm      -> out/x.wasm
#   PROBE_BUILD=b ./build.sh   -> a second build whose BUILD constant is "b"
#
# Installs componentize-py into .venv/ (git-ignored) the first time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/wasm32-wasip2/plugin/python_probe.wasm}"
version="0.25.1"
venv="$here/.venv"
tool="$venv/bin/componentize-py"

if [[ ! -x "$tool" ]] || [[ "$("$tool" --version)" != "componentize-py $version" ]]; then
    echo "installing componentize-py $version into $venv" >&2
    python3 -m venv "$venv"
    # The wheels' hashes are pinned, as `eventhost build` pins them.
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --require-hashes --only-binary=:all: --no-deps -r "$here/requirements.txt"
fi

# Build from a copy so PROBE_BUILD never edits the source.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$here/app.py" "$stage/app.py"
if [[ -n "${PROBE_BUILD:-}" ]]; then
    if [[ ! "$PROBE_BUILD" =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "PROBE_BUILD must match [A-Za-z0-9._-]+, got '$PROBE_BUILD'" >&2
        exit 2
    fi
    sed -i "s/^BUILD = \"py\"\$/BUILD = \"$PROBE_BUILD\"/" "$stage/app.py"
    grep -q "^BUILD = \"$PROBE_BUILD\"\$" "$stage/app.py" || {
        echo "could not set BUILD in app.py" >&2
        exit 1
    }
fi

mkdir -p "$(dirname "$out")"
# No venv site-packages on the path: the app needs only the standard library
# (componentize-py would otherwise bundle the venv's packages).
(cd "$stage" && env -u VIRTUAL_ENV "$tool" -q -d "$repo/wit/v0.2" -w subscriber componentize \
    -p "$stage" -o "$stage/out.wasm" app)
mv "$stage/out.wasm" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)" >&2
