#!/usr/bin/env bash
# The test command: installs what is missing, builds the plugins, and runs
# every test: unit tests beside the code, the plugins' own tests, and the
# end-to-end tests in tests/ (real binary, one redis-server per test).
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup

cargo fmt --all --check
cargo build --profile plugin --target wasm32-wasip2 --workspace --exclude eventhost
cargo test --workspace "$@"
