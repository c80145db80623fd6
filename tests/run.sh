#!/usr/bin/env bash
# The test command: installs what is missing, builds the plugins, and runs
# every test: unit tests beside the code, the plugins' own tests, the SDKs'
# and the example services' tests in their own languages, the end-to-end
# tests in tests/ (real binary, one redis-server per test), the speed guard
# (wasm against native throughput on the tests' build, a floor on the
# ratio: host/benches/throughput.rs `ratios`), and the orders example's
# script end to end with the binary the tests built.
#
#   tests/run.sh [ARGS]   ARGS go to `cargo test` (e.g. a test's name); with
#                         ARGS, only cargo's tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup

cargo fmt --all --check
cargo build --profile plugin --target wasm32-wasip2 --workspace --exclude eventhost
cargo test --workspace "$@"
(($# == 0)) || exit 0

echo "==> the Python SDK and the Python example service (pytest)"
for project in plugins/sdk-python examples/orders/services/shipping; do
  (cd "$project" && python3 -m pytest -q)
done
echo "==> the JavaScript SDK and the JavaScript example service (node --test)"
node --test plugins/sdk-js/test/ examples/orders/services/notification/test/
echo "==> the speed guard: wasm against native throughput on this build, 5 alternating rounds"
# --workspace: the features the tests were built with, so their build is reused.
cargo bench --profile dev --workspace --bench throughput -- quick ratios check
echo "==> the orders example, end to end (examples/orders/run.sh 200)"
EVENTHOST_BIN="$PWD/target/debug/eventhost" examples/orders/run.sh 200
