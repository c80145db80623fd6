#!/usr/bin/env python3
"""Where a host's CPU goes per delivery: one host (wasm or native) under the
throughput benchmark's load, sampled with `perf`, its samples summed by
what they are (the guest's code, wasmtime, the allocator, the Redis client,
...) and shown as µs of host CPU per delivery.

    python3 host/benches/where_time_goes.py trivial wasm
    python3 host/benches/where_time_goes.py stateful native --bench target/release/deps/throughput-<hash>
    python3 host/benches/where_time_goes.py path/to/plugin.wasm wasm --events 10000

`trivial` and `stateful` are the throughput benchmark's workloads (3
subscribers of `plugins/noop` or `plugins/probe`); a `.wasm` file runs as
one subscriber at `concurrency = 1`, as the benchmark's languages section
does. `native` runs the benchmark binary as the host (`--serve-native`):
build it with `cargo bench -p eventhost --bench throughput --no-run`, which
prints its path. Needs `perf`, `redis-server`, the `redis` Python package,
a release build (`cargo build --release`) and the plugins (`cargo build
--profile plugin --target wasm32-wasip2 --workspace --exclude eventhost`).
"""

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import redis

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# What a sample is, by its symbol or its object: the first that matches.
CATEGORIES = [
    # Compiled code is mapped from the cache (`.cwasm`), or from the file
    # a first compile wrote (`.compiling-*.part`, deleted once cached).
    ("guest code (wasm)", lambda dso, sym: dso.endswith(".cwasm") or dso.startswith(".compiling-")
     or sym.startswith("wasm[")),
    ("kernel", lambda dso, sym: dso == "[kernel.kallsyms]"),
    ("wasmtime (calls, lifting, lowering)", lambda dso, sym: "wasmtime" in sym),
    ("allocator", lambda dso, sym: re.match(r"(_?mi_|__rust_(re|de)?alloc|__rustc::)", sym) is not None
     or "RawVec" in sym or "finish_grow" in sym),
    ("memcpy, memcmp", lambda dso, sym: re.search(r"mem(move|cpy|cmp|set|chr)", sym) is not None),
    ("Redis client (parse, encode)", lambda dso, sym: "combine::" in sym or re.search(r"\bredis::", sym) is not None),
    ("serde_json", lambda dso, sym: "serde_json" in sym or "serde_core" in sym),
    ("hashing, maps", lambda dso, sym: re.search(r"sip::|hashbrown|indexmap|hash_one|BuildHasher", sym) is not None),
    ("tokio", lambda dso, sym: "tokio" in sym or "futures" in sym),
    ("formatting, strings", lambda dso, sym: re.search(r"fmt|from_utf8|String|str::", sym) is not None),
    ("eventhost", lambda dso, sym: "eventhost" in sym or "throughput::" in sym),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(workload, native, redis_port, metrics, plugins):
    """The host's config and its subscribers' names."""
    text = (
        f'[redis]\nurl = "redis://127.0.0.1:{redis_port}"\n\n'
        f'[plugins]\ndir = "plugins"\nwatch = false\ncache_dir = "{ROOT}/target/e2e-cache"\n\n'
        f"[bus]\nstream_maxlen = 10000\nclaim_idle_ms = 2000\n\n"
        f'[http]\nlisten = "{metrics}"\n\n'
    )
    if workload.endswith(".wasm"):
        shutil.copy(workload, f"{plugins}/plugin.wasm")
        names, plugin, extra = ["lang"], "plugin.wasm", "concurrency = 1\n"
    else:
        crate = "noop" if workload == "trivial" else "probe"
        shutil.copy(f"{ROOT}/target/wasm32-wasip2/plugin/{crate}.wasm", f"{plugins}/{crate}.wasm")
        names, plugin, extra = ["s1", "s2", "s3"], f"{crate}.wasm", ""
    for name in names:
        text += f'[subscribers.{name}]\nplugin = "{plugin}"\nevents = ["Ping"]\n{extra}'
        text += f"[subscribers.{name}.config]\n"
        if workload == "stateful":
            text += 'follow_up = "Pong"\n'
        if native:
            text += f'native = "{"probe" if workload == "stateful" else "noop"}"\n'
        text += "\n"
    return text, names


def handled(metrics):
    try:
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=2).read().decode()
    except OSError:
        return -1
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("eventhost_handled_total{"))


def run(args):
    """Runs the host under load, sampled into `args.out`; returns deliveries
    and the host's CPU seconds while they were handled."""
    native = args.kind == "native"
    work = tempfile.mkdtemp(prefix="where-time-goes-")
    redis_port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    host = None
    try:
        os.makedirs(f"{work}/plugins")
        text, names = config(args.workload, native, redis_port, metrics, f"{work}/plugins")
        open(f"{work}/eventhost.toml", "w").write(text)
        if native:
            command = [args.bench, "--serve-native", f"{work}/eventhost.toml"]
        else:
            command = [f"{ROOT}/target/release/eventhost", "run", "--config", f"{work}/eventhost.toml"]
        host = subprocess.Popen(command, stdout=open(f"{work}/host.log", "w"), stderr=subprocess.STDOUT, cwd=work)
        wait_for(host, lambda: handled(metrics) >= 0, work)
        publisher = redis.Redis(port=redis_port)
        # A first batch compiles into the cache and warms the instances.
        warm = publish(publisher, 0, 2000)
        wait_for(host, lambda: handled(metrics) >= warm * len(names), work)
        perf = subprocess.Popen(
            ["perf", "record", "-F", "1999", "-o", args.out, "-p", str(host.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        cpu = cpu_seconds(host.pid)
        publish(publisher, warm, args.events)
        wait_for(host, lambda: handled(metrics) >= (warm + args.events) * len(names), work)
        cpu = cpu_seconds(host.pid) - cpu
        perf.send_signal(2)
        perf.wait()
        return args.events * len(names), cpu
    finally:
        if host:
            host.terminate()
            host.wait()
        server.terminate()
        server.wait()
        shutil.rmtree(work)


def wait_for(host, done, work, limit_s=300):
    """Waits until `done()`; a host that exited or a run past `limit_s` is
    an error showing the host's log, never a wait without end."""
    deadline = time.time() + limit_s
    while not done():
        if host.poll() is not None or time.time() > deadline:
            log = open(f"{work}/host.log").read()[-4000:]
            why = f"the host exited ({host.returncode})" if host.returncode is not None else f"not done in {limit_s} s"
            raise SystemExit(f"{why}; its log ends:\n{log}")
        time.sleep(0.02)


def publish(conn, first, events):
    """Publishes LeanMQ-shaped Pings, 500 per pipeline; returns how many."""
    now = time.time()
    for start in range(first, first + events, 500):
        pipe = conn.pipeline(transaction=False)
        for n in range(start, min(first + events, start + 500)):
            data = (
                f'{{"event_type":"Ping","event_id":"{n}","timestamp":{now},"n":{n},'
                f'"_metadata":{{"id":"{n}","timestamp":{now},"ttl":null}}}}'
            )
            pipe.xadd("events:all", {"data": data})
        pipe.execute()
    return events


def categorize(data):
    """Share of the samples by category, and the biggest uncategorized."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--no-inline", "-g", "none",
         "--sort", "dso,sym", "--stdio"],
        capture_output=True, text=True, check=True,
    ).stdout
    shares = collections.OrderedDict((name, 0.0) for name, _ in CATEGORIES)
    shares["other"] = 0.0
    other = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+(?: \(deleted\))?)\s+\[.\]\s+(.*)", line)
        if not m:
            continue
        share, dso, sym = float(m[1]), m[2], m[3].strip()
        name = next((name for name, match in CATEGORIES if match(dso, sym)), "other")
        shares[name] += share
        if name == "other":
            other[sym[:80]] += share
    return shares, other


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="trivial, stateful, or a .wasm file")
    parser.add_argument("kind", choices=["wasm", "native"])
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--bench", help="the throughput benchmark binary (for native)")
    parser.add_argument("--out", default="where-time-goes.data", help="perf's data file")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args()
    if args.kind == "native" and not args.bench:
        parser.error("native needs --bench (cargo bench -p eventhost --bench throughput --no-run)")
    deliveries, cpu = run(args)
    per_delivery = cpu * 1e6 / deliveries
    shares, other = categorize(args.out)
    if args.json:
        print(json.dumps({"per_delivery_us": per_delivery,
                          "categories": {k: v * per_delivery / 100 for k, v in shares.items()}}))
        return
    print(f"{args.workload} {args.kind}: {deliveries} deliveries, host CPU {per_delivery:.2f} µs each (perf's own cost included)")
    for name, share in shares.items():
        print(f"  {name:<38} {share:5.1f}%  {share * per_delivery / 100:6.2f} µs")
    print("  most of other: " + ", ".join(f"{s} {p:.1f}%" for s, p in other.most_common(4)))


if __name__ == "__main__":
    main()
