#!/usr/bin/env bash
# The orders example, end to end: installs what is missing, builds eventhost
# and the four service plugins, starts the payment provider (a small HTTP
# server the payment service charges) and the host (with its own
# redis-server), places N orders (default 1000), waits until every order is shipped or its
# payment is dead-lettered, and prints what happened.
#
#   examples/orders/run.sh [N]
#
# Environment: EVENTHOST_BIN, an eventhost binary to use (default: build
# target/release/eventhost); TIMEOUT, seconds to wait for the orders (default 60 + N/200);
# EVENTHOST_LOG, the host's log filter (default info; e.g.
# info,eventhost::plugin=warn leaves the services' own lines out).
set -euo pipefail

EXAMPLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$EXAMPLE/../.." && pwd)"
CONFIG="$EXAMPLE/eventhost.toml"
STATE="$EXAMPLE/.eventhost"
URL_FILE="$STATE/redis/url"
LOG="$STATE/host.log"
PID_FILE="$STATE/host.pid"
# EVENTHOST_BIN: an eventhost binary to use instead of building the release
# one (CI passes the one its tests built, so wasmtime is built once).
HOST_BIN="${EVENTHOST_BIN:-$ROOT/target/release/eventhost}"
SERVICES=(order payment shipping notification)
RUST_SERVICES=(order payment)
OTHER_SERVICES=(shipping notification) # Python, JavaScript
# Each service's crate and subscriber are named <service>-service.
SUBSCRIBERS=("${SERVICES[@]/%/-service}")

N="${1:-1000}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [N]   (N: how many orders to place, a positive number; default 1000)" >&2
  exit 2
fi
TIMEOUT="${TIMEOUT:-$((60 + N / 200))}"

if [[ -t 1 ]]; then
  say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '==> %s\n' "$*"; }
fi
fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# The value of a string or number member of a flat JSON object read from
# stdin (the first one of that name); enough for the entries this example
# writes.
# (All of sed's output is read: a `| head` would stop sed with SIGPIPE, which
# pipefail turns into a failure.)
json_field() {
  local all
  all="$(sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p")"
  printf '%s\n' "${all%%$'\n'*}"
}

# Seconds since the epoch, with microseconds.
now() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    printf '%s\n' "${EPOCHREALTIME/,/.}"
  else
    date +%s.%N
  fi
}

# redis-cli on the host's private server, given the URL in $URL_FILE:
# unix:///<socket>?db=0&user=default&pass=<password>. The server has no TCP
# port (so no local user can take it and read the password), and redis-cli
# -u reads only redis:// URLs, so the socket and password are given apart.
url_cli() {
  local url="$1" socket
  shift
  socket="${url#unix://}"
  socket="${socket%%\?*}"
  socket="$(printf '%b' "${socket//%/\\x}")" # undo percent-encoding
  redis-cli --no-auth-warning -s "$socket" --user default --pass "${url##*&pass=}" "$@"
}

# --- stopping the host, whatever happens -----------------------------------

HOST_PID=""

# SIGTERM to the host we started, then wait for it to stop its redis-server.
stop_host() {
  local pid="$HOST_PID"
  [[ -n "$pid" ]] || return 0
  HOST_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 300)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "warning: the host (pid $pid) did not stop within 30 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

# --- the servers the services call: the payment provider and the webhook
# receiver, small real HTTP servers on the ports eventhost.toml grants ---

PROVIDER_PORT=8471
RECEIVER_PORT=8472
SERVER_PIDS=()

# start_server NAME PORT SCRIPT ARGS...: starts it, logging to
# $STATE/NAME.log, and waits until it listens.
start_server() {
  local name="$1" port="$2" script="$3" log="$STATE/$1.log"
  shift 3
  python3 "$EXAMPLE/servers/$script" --port "$port" "$@" >"$log" 2>&1 &
  SERVER_PIDS+=($!)
  local waited=0
  until grep -q "listening on" "$log" 2>/dev/null; do
    if ! kill -0 "${SERVER_PIDS[-1]}" 2>/dev/null || ((waited > 100)); then
      cat "$log" >&2
      fail "the $name did not start on 127.0.0.1:$port (in use? eventhost.toml grants that port)"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

stop_servers() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
}

# What the server on PORT saw (GET /stats), as `name value` lines; a
# nested object's members as `name.member value`.
server_stats() {
  python3 - "$1" <<'PY'
import json, sys, urllib.request
stats = json.load(urllib.request.urlopen("http://127.0.0.1:%s/stats" % sys.argv[1], timeout=5))
for name, value in stats.items():
    for key, v in (value.items() if isinstance(value, dict) else [(None, value)]):
        print(name if key is None else name + "." + key, v)
PY
}

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0 && status != 130 && status != 143)) && [[ -n "$HOST_PID" && -s "$LOG" ]]; then
    echo "--- last lines of the host log ($LOG) ---" >&2
    tail -n 20 "$LOG" >&2
    echo "---" >&2
  fi
  stop_host
  stop_servers
  exit "$status"
}
trap on_exit EXIT
trap 'echo; echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# Stops a host left running by an earlier run (ours, or one a user started
# with this config), found by our pid file or as the parent of the private
# redis-server; then wipes the Redis data so every run starts the same.
clean_previous_run() {
  local pid candidates=() redis_pid
  [[ -s "$PID_FILE" ]] && candidates+=("$(<"$PID_FILE")")
  if [[ -s "$URL_FILE" ]]; then
    redis_pid="$(url_cli "$(<"$URL_FILE")" INFO server 2>/dev/null |
      tr -d '\r' | sed -n 's/^process_id://p')" || true
    if [[ -n "$redis_pid" ]]; then
      candidates+=("$(ps -o ppid= -p "$redis_pid" 2>/dev/null | tr -d ' ')") || true
    fi
  fi
  for pid in "${candidates[@]}"; do
    if [[ "$pid" =~ ^[0-9]+$ ]] && ps -o args= -p "$pid" 2>/dev/null | grep -q 'eventhost.* run'; then
      say "stopping the host left running by an earlier run (pid $pid)"
      HOST_PID="$pid"
      stop_host
    fi
  done
  if [[ -s "$URL_FILE" ]] && url_cli "$(<"$URL_FILE")" PING >/dev/null 2>&1; then
    fail "a redis-server for $CONFIG still answers at $STATE/redis/redis.sock; stop the eventhost that runs it and try again"
  fi
  rm -rf "$STATE/redis" "$PID_FILE" "$LOG"
}

# --- 1. install, build ------------------------------------------------------

say "installing what is missing (redis-server, the wasm32-wasip2 target, LeanMQ)"
"$ROOT/.ci/setup"
command -v redis-cli >/dev/null 2>&1 || fail "redis-cli is missing (it comes with redis-server; Debian/Ubuntu: apt-get install redis-tools)"

if [[ -n "${EVENTHOST_BIN:-}" ]]; then
  [[ -x "$HOST_BIN" ]] || fail "EVENTHOST_BIN=$HOST_BIN is not an executable"
  say "using eventhost at $HOST_BIN"
else
  say "building eventhost (release; the first build takes several minutes)"
  (cd "$ROOT" && cargo build --release -p eventhost)
fi

say "building the four services as WebAssembly components"
# order and payment are Rust crates of the workspace; shipping is Python and
# notification JavaScript, built by `eventhost build` with componentize-py
# and componentize-js (fetched into eventhost's cache on first use).
mkdir -p "$EXAMPLE/plugins" "$STATE"
packages=()
for s in "${RUST_SERVICES[@]}"; do packages+=(-p "$s-service"); done
(cd "$ROOT" && cargo build --profile plugin --target wasm32-wasip2 "${packages[@]}")
for s in "${RUST_SERVICES[@]}"; do
  cp "$ROOT/target/wasm32-wasip2/plugin/${s}_service.wasm" "$EXAMPLE/plugins/"
done
for s in "${OTHER_SERVICES[@]}"; do
  echo "    \$ eventhost build services/$s"
  built="$("$HOST_BIN" build "$EXAMPLE/services/$s" 2> >(sed 's/^/    /' >&2) | tail -n 1)"
  [[ -f "$built" ]] || fail "eventhost build services/$s printed no component"
  cp "$built" "$EXAMPLE/plugins/${s}_service.wasm"
done

# --- 2. start the host -------------------------------------------------------

clean_previous_run
say "starting the payment provider (127.0.0.1:$PROVIDER_PORT) and the webhook receiver (127.0.0.1:$RECEIVER_PORT)"
start_server "payment provider" "$PROVIDER_PORT" payment_provider.py --decline-percent 10 --timeout-percent 20
start_server "webhook receiver" "$RECEIVER_PORT" webhook_receiver.py
say "starting: eventhost run --config $CONFIG   (log: $LOG)"
# In a session of its own (when setsid exists) so a Ctrl-C in the terminal
# reaches only this script, whose trap stops the host with one SIGTERM; a
# second signal would make the host exit without finishing its batch.
launcher=()
command -v setsid >/dev/null 2>&1 && launcher=(setsid)
# The summary needs the "eventhost running" and retry lines, whatever the
# user's filter says.
log_filter="${EVENTHOST_LOG:-info},eventhost::daemon=info,eventhost::bus::subscriber=info"
EVENTHOST_LOG="$log_filter" "${launcher[@]}" "$HOST_BIN" run --config "$CONFIG" >"$LOG" 2>&1 &
HOST_PID=$!
echo "$HOST_PID" >"$PID_FILE"

# The first start compiles the plugins (the Python and JavaScript ones take
# 10-40 s each; later starts load them from the compiled cache).
deadline=$((SECONDS + 300))
until grep -q "eventhost running" "$LOG" 2>/dev/null; do
  if ! kill -0 "$HOST_PID" 2>/dev/null; then
    wait "$HOST_PID" 2>/dev/null || true
    HOST_PID=""
    echo "--- host log ---" >&2
    cat "$LOG" >&2
    fail "eventhost exited before it was running (see above)"
  fi
  ((SECONDS < deadline)) || fail "eventhost did not log \"eventhost running\" within 300 s"
  sleep 0.05
done
[[ -s "$URL_FILE" ]] || fail "eventhost runs but wrote no $URL_FILE"
URL="$(<"$URL_FILE")"
grep "eventhost running" "$LOG" | sed 's/^/    /'

rc() { url_cli "$URL" "$@"; }

# --- 3. place the orders -----------------------------------------------------

# The fields of order number i, as JSON members: its id, a user, and one to
# three lines of a small catalogue, all chosen by i so every run is the same.
ORDER_AWK='
function order(i,   items, m, k, p) {
  split("Laptop,Mouse,Keyboard,Monitor,Headphones,Webcam", name, ",")
  split("1299.99,29.99,89.5,349,149.95,59.9", price, ",")
  items = ""; m = 1 + i % 3
  for (k = 0; k < m; k++) {
    p = 1 + (i + 2 * k) % 6
    items = items (k ? "," : "") sprintf("{\"product_id\":\"prod-%d\",\"name\":\"%s\",\"price\":%s,\"quantity\":%d}", p, name[p], price[p], 1 + (i + k) % 2)
  }
  return sprintf("\"order_id\":\"order-%06d\",\"user_id\":\"user-%d\",\"items\":[%s]", i, 1 + i % 97, items)
}'

start="$(now)"
say "placing order 1 with the CLI"
first="$(LC_ALL=C awk "$ORDER_AWK"' BEGIN { printf "{%s}\n", order(1) }')"
echo "    \$ eventhost publish CreateOrderCommand '$first'"
"$HOST_BIN" publish CreateOrderCommand "$first" --config "$CONFIG" | sed 's/^/    /'

if ((N > 1)); then
  say "placing orders 2..$N: LeanMQ-style events XADDed to events:all, pipelined through redis-cli --pipe"
  # Each entry is what a LeanMQ producer writes: one field `data`, a JSON
  # object with event_type, event_id, timestamp and _metadata. The protocol
  # is written by hand so one redis-cli process sends every order.
  pipe_out="$(
    LC_ALL=C awk -v n="$N" -v ts="$start" -v run="$$" "$ORDER_AWK"' BEGIN {
      for (i = 2; i <= n; i++) {
        id = sprintf("%08x-0000-4000-8000-%012x", run, i)
        data = sprintf("{\"event_type\":\"CreateOrderCommand\",\"event_id\":\"%s\",\"timestamp\":%s,%s,\"_metadata\":{\"id\":\"%s\",\"timestamp\":%s,\"ttl\":null}}", id, ts, order(i), id, ts)
        printf "*5\r\n$4\r\nXADD\r\n$10\r\nevents:all\r\n$1\r\n*\r\n$4\r\ndata\r\n$%d\r\n%s\r\n", length(data), data
      }
    }' | rc --pipe 2>&1
  )" || fail "redis-cli --pipe failed: $pipe_out"
  grep -q "errors: 0," <<<"$pipe_out" || fail "redis-cli --pipe reported errors: $pipe_out"
fi
published="$(now)"
printf '    %d orders published in %.2f s\n' "$N" "$(awk -v a="$start" -v b="$published" 'BEGIN { print b - a }')"

# --- 4. wait until every order is final ---------------------------------------

# Entries not yet read by, or still pending in, the bus's consumer groups
# (one redis-cli call: XINFO GROUPS of each stream, flat "... pending <n> ...
# lag <n> ..."; an unknown lag counts as unfinished).
unfinished() {
  local stream
  # (and the notification service's webhooks, queued to be sent)
  for stream in events:all "${SUBSCRIBERS[@]/#/events:sub:}" events:sub:notification-service:http; do
    echo "XINFO GROUPS $stream"
  done | rc | tr -d '\r' |
    awk 'prev == "pending" || prev == "lag" { s += ($0 == "" ? 1 : $0) } { prev = $0 } END { print s + 0 }'
}
counter() { local v; v="$(rc HGET "$1" "$2")"; echo "${v:-0}"; }

say "waiting until every order is shipped or its payment is dead-lettered (timeout ${TIMEOUT} s)"
deadline=$((SECONDS + TIMEOUT))
last_report=$SECONDS
while :; do
  # One round trip: orders notified as created and as shipped, and declined.
  {
    read -r created_n
    read -r shipped_n
    read -r declined_n
  } < <(printf '%s\n' \
    "HGET events:state:notification-service notified:OrderCreatedEvent" \
    "HGET events:state:notification-service notified:OrderShippedEvent" \
    "XLEN events:sub:payment-service:dlq" | rc | tr -d '\r')
  [[ "$created_n" =~ ^[0-9]+$ ]] || created_n=0
  [[ "$shipped_n" =~ ^[0-9]+$ ]] || shipped_n=0
  [[ "$declined_n" =~ ^[0-9]+$ ]] || declined_n=0
  if ((created_n == N && shipped_n + declined_n == N)) && [[ "$(unfinished)" == 0 ]]; then
    break
  fi
  kill -0 "$HOST_PID" 2>/dev/null || fail "eventhost stopped while orders were in flight"
  if ((SECONDS >= deadline)); then
    fail "not every order reached a final state within ${TIMEOUT} s: $created_n of $N created, $shipped_n shipped, $declined_n declined, $(unfinished) entries unread or pending"
  fi
  if ((SECONDS - last_report >= 5)); then
    echo "    ... $created_n created, $shipped_n shipped, $declined_n declined"
    last_report=$SECONDS
  fi
  sleep 0.05
done
done_at="$(now)"

# --- 5. what happened --------------------------------------------------------

orders="$(rc HVALS events:state:order-service)"
count_status() { grep -c "\"status\":\"$1\"" <<<"$orders" || true; }
created="$(grep -c '"order_id"' <<<"$orders" || true)"
status_created="$(count_status created)"
status_paid="$(count_status paid)"
status_shipped="$(count_status shipped)"
paid="$(rc HLEN events:state:payment-service)"
shipments="$(rc HLEN events:state:shipping-service)"
declined="$(rc XLEN events:sub:payment-service:dlq)"
# One read of the DLQ; json_field takes the first entry's reason and order.
dead="$(rc XRANGE events:sub:payment-service:dlq - +)"
example_reason="$(json_field reason <<<"$dead")"
example_order="$(json_field order_id <<<"$dead")"
retried="$(grep -c "payment provider timed out" "$LOG" || true)"
retries_dead="$(grep -c "retry exhausted" <<<"$dead" || true)"
notified="$(counter events:state:notification-service notified)"
deliveries=0
for sub in "${SUBSCRIBERS[@]}"; do
  deliveries=$((deliveries + $(rc XLEN "events:sub:$sub")))
done
events="$(rc XLEN events:all)"
other_dlq=0
for stream in events:all:dlq events:sub:order-service:dlq events:sub:shipping-service:dlq events:sub:notification-service:dlq; do
  other_dlq=$((other_dlq + $(rc XLEN "$stream")))
done
declare -A provider receiver
while read -r name value; do provider[$name]=$value; done < <(server_stats "$PROVIDER_PORT")
while read -r name value; do receiver[$name]=$value; done < <(server_stats "$RECEIVER_PORT")
elapsed="$(awk -v a="$start" -v b="$done_at" 'BEGIN { printf "%.2f", b - a }')"
rate="$(awk -v d="$deliveries" -v a="$start" -v b="$done_at" 'BEGIN { printf "%.0f", d / (b - a) }')"

echo
echo "orders example: $N orders"
printf '  %-24s %7d\n' "orders created" "$created"
printf '  %-24s %7d\n' "paid" "$paid"
printf '  %-24s %7d   (payment-service DLQ, events:sub:payment-service:dlq)\n' "dead-lettered (declined)" "$declined"
if [[ -n "$example_reason" ]]; then
  printf '  %-24s %s\n' "" "e.g. \"$example_reason\""
fi
printf '  %-24s %7d   (the provider timed out, paid on the retry)\n' "retried (flaky)" "$retried"
printf '  %-24s %7d   requests: %d charged, %d declined, %d timed out, %d answered again by key\n' \
  "payment provider saw" "${provider[requests]}" "${provider[charges]}" "${provider[declined]}" \
  "${provider[timeouts]}" "${provider[replayed]}"
printf '  %-24s %7d   orders charged twice; %d distinct Idempotency-Keys\n' "" \
  "${provider[double_charged]}" "${provider[keys]}"
printf '  %-24s %7d\n' "shipped" "$status_shipped"
printf '  %-24s %7d\n' "notifications sent" "$notified"
printf '  %-24s %7d   webhooks with %d distinct Idempotency-Keys (sent after each commit)\n' \
  "webhook receiver got" "${receiver[requests]}" "${receiver[keys]}"
for type in OrderCreatedEvent PaymentProcessedEvent OrderShippedEvent; do
  printf '  %-24s %7d\n' "  $type" "$(counter events:state:notification-service "notified:$type")"
done
printf '  %-24s %7d   (events:all)\n' "events published" "$events"
printf '  %-24s %7d   in %s s = %s deliveries/s\n' "deliveries" "$deliveries" "$elapsed" "$rate"
echo "  sample orders:"
samples=(order-000001 order-000002 order-000003 order-000004 order-000005)
if [[ -n "$example_order" && " ${samples[*]} " != *" $example_order "* ]]; then
  samples+=("$example_order")
fi
for id in "${samples[@]}"; do
  order="$(rc HGET events:state:order-service "order:$id")"
  [[ -n "$order" ]] || continue
  status="$(json_field status <<<"$order")"
  case "$status" in
  shipped) detail="$(json_field carrier <<<"$order") $(json_field tracking_number <<<"$order")" ;;
  created) detail="payment declined, OrderCreatedEvent in the payment-service DLQ" ;;
  *) detail="" ;;
  esac
  printf '    %s  %-8s total %8.2f  %s\n' "$id" "$status" "$(json_field total <<<"$order")" "$detail"
done

problems=()
((created == N)) || problems+=("$created orders exist, $N were placed")
((status_shipped + declined == N)) || problems+=("$status_shipped shipped + $declined declined != $N orders")
((status_created == declined)) || problems+=("$status_created orders stayed created but $declined payments were declined")
((status_paid == 0)) || problems+=("$status_paid orders are paid but not shipped")
((paid == status_shipped && shipments == status_shipped)) || problems+=("$paid payments and $shipments shipments for $status_shipped shipped orders")
((retries_dead == 0)) || problems+=("$retries_dead flaky payments ran out of attempts")
((other_dlq == 0)) || problems+=("$other_dlq entries in other DLQs")
((provider[double_charged] == 0)) || problems+=("the provider charged ${provider[double_charged]} orders twice")
((provider[charges] == paid)) || problems+=("the provider made ${provider[charges]} charges for $paid payments")
((provider[declined] == declined)) || problems+=("the provider declined ${provider[declined]} cards, $declined payments are dead-lettered")
((receiver[keys] == notified)) || problems+=("the receiver got ${receiver[keys]} distinct webhooks for $notified notifications")
((receiver[without_key] == 0)) || problems+=("${receiver[without_key]} webhooks came without an Idempotency-Key")
((provider[timeouts] == retried)) || problems+=("the provider timed out ${provider[timeouts]} times, the service retried $retried")
if ((${#problems[@]} > 0)); then
  printf '  problem: %s\n' "${problems[@]}" >&2
  fail "the orders did not end as expected"
fi

echo
say "stopping the host (SIGTERM; it stops its redis-server) and the servers"
stop_host
stop_servers
echo "    done. The host's log is $LOG."
