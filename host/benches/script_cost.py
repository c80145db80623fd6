"""What the bus's Lua scripts cost Redis, one version against another.

Runs batches shaped like the hot path (256 entries: a fan-out to 3
subscriber streams; a commit whose every record reads a key, sets it and
publishes) through each version on a redis-server of its own, and prints
Redis's own time per call (INFO commandstats), the best of two
interleaved runs. Redis time only: the host and the network are left out,
so small changes show through the VM's noise.

    git show <rev>:host/src/bus/scripts/commit.lua > /tmp/old-commit.lua
    git show <rev>:host/src/bus/scripts/fanout.lua > /tmp/old-fanout.lua
    python3 host/benches/script_cost.py /tmp/old-commit.lua /tmp/old-fanout.lua [rounds]
"""
import pathlib
import subprocess
import sys
import time

import redis

BATCH = 256
PORT = 16411
HERE = pathlib.Path(__file__).resolve().parent.parent / "src/bus/scripts"
PAYLOAD = ('{"event_type":"Ping","event_id":"e","timestamp":1.0,'
           '"_metadata":{"id":"e","timestamp":1.0,"ttl":null}}')


def main():
    old_commit, old_fanout = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    scripts = {
        "commit": {"old": open(old_commit).read(), "new": (HERE / "commit.lua").read_text()},
        "fanout": {"old": open(old_fanout).read(), "new": (HERE / "fanout.lua").read_text()},
    }
    server = subprocess.Popen(["redis-server", "--port", str(PORT), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    r = redis.Redis(port=PORT)
    try:
        for kind in ("fanout", "commit"):
            best = {}
            for version in ("old", "new", "old", "new"):
                usec = run(r, kind, scripts[kind][version], rounds)
                best[version] = min(best.get(version, usec), usec)
            print(f"{kind}: old {best['old']:.0f} µs per {BATCH} entries "
                  f"({best['old'] / BATCH:.2f} µs each), new {best['new']:.0f} µs "
                  f"({best['new'] / BATCH:.2f} µs each), {best['new'] / best['old'] - 1:+.0%}")
    finally:
        server.terminate()


def run(r, kind, script, rounds):
    """Redis's time per call of `script` over `rounds` batches."""
    r.flushall()
    sha = r.script_load(script)
    r.xgroup_create("s", "g", id="0", mkstream=True)
    r.config_resetstat()
    for _ in range(rounds):
        pipe = r.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.xadd("s", {"data": PAYLOAD})
        ids = [i.decode() for i in pipe.execute()]
        r.xreadgroup("g", "c", {"s": ">"}, count=BATCH)
        if kind == "fanout":
            args = ["g"]
            for i in ids:
                args += [i, "3", "3", "4", "5", PAYLOAD]
            r.evalsha(sha, 5, "s", "s:dlq", "sub:1", "sub:2", "sub:3", *args)
        else:
            args = ["g", "0", "0"]
            for n, i in enumerate(ids):
                key = f"k{n}"
                args += ["ok", i, "1", key, "0", "1", PAYLOAD, "1", key, "1", "0"]
            r.evalsha(sha, 4, "s", "s:dlq", "state", "all", *args)
    stats = r.info("commandstats").get("cmdstat_evalsha", {})
    return stats.get("usec", 0) / max(stats.get("calls", 0), 1)


if __name__ == "__main__":
    main()
