#!/usr/bin/env bash
# Builds the JavaScript probe plugin into a WebAssembly component.
#
#   ./build.sh                 -> <repo>/target/wasm32-wasip2/plugin/js_probe.wasm
#   ./build.sh out/x.wasm      -> out/x.wasm
#   PROBE_BUILD=b ./build.sh   -> a second build whose BUILD constant is "b"
#
# Installs componentize-js into node_modules/ (git-ignored) the first time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/wasm32-wasip2/plugin/js_probe.wasm}"
tool="$here/node_modules/.bin/componentize-js"

if [[ ! -x "$tool" ]]; then
    echo "installing componentize-js into $here/node_modules" >&2
    # Not `npm ci`: npm 11 refuses this lock file ("Missing: <optional
    # platform package>@ from lock file", optional dependencies of other
    # platforms). `install --no-save` follows the lock and never rewrites it.
    (cd "$here" && npm install --no-save --no-audit --no-fund --loglevel=error)
fi

# Build from a copy so PROBE_BUILD never edits the source.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$here/probe.js" "$stage/probe.js"
if [[ -n "${PROBE_BUILD:-}" ]]; then
    if [[ ! "$PROBE_BUILD" =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "PROBE_BUILD must match [A-Za-z0-9._-]+, got '$PROBE_BUILD'" >&2
        exit 2
    fi
    sed -i "s/^const BUILD = \"js\";\$/const BUILD = \"$PROBE_BUILD\";/" "$stage/probe.js"
    grep -q "^const BUILD = \"$PROBE_BUILD\";\$" "$stage/probe.js" || {
        echo "could not set BUILD in probe.js" >&2
        exit 1
    }
fi

mkdir -p "$(dirname "$out")"
# No fetch (the probe makes no requests: its figures stay comparable with
# earlier builds) and no fetch-event (a subscriber serves no requests).
"$tool" "$stage/probe.js" --wit "$repo/wit/v0.2" --world-name subscriber \
    --disable http fetch-event -o "$stage/out.wasm"
mv "$stage/out.wasm" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)" >&2
