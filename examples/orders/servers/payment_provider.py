#!/usr/bin/env python3
"""The payment provider of the orders example: a small real HTTP service.

The payment service (a plugin) charges each order here with
`POST /v1/charges` and a JSON body `{"order_id": ..., "amount": ...}`. Like
a real provider it keys every charge by the request's `Idempotency-Key`
header (eventhost adds one per event and request, the same on every retry):
a repeated key gets the stored answer, so a retry never charges twice.

Its bad days are deterministic, so that a run can be checked: an order's id
hashes (64-bit FNV-1a) to a bucket in 0..100; the first `--decline-percent`
buckets are declined (402, final), the next `--timeout-percent` stall for
`--stall-ms` and answer 504 on their first request (the retry is charged).

`GET /stats` answers what it saw, as JSON. It prints one line,
`listening on http://127.0.0.1:<port>`, once it accepts connections.

    payment_provider.py [--port 8471] [--decline-percent 10]
                        [--timeout-percent 20] [--stall-ms 150]
"""

import argparse
import json
import threading
import time
from loopback_http import JsonHandler, serve


def fnv1a(text):
    """64-bit FNV-1a, the hash the example's checks use too."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class Ledger:
    """What the provider has answered, by idempotency key; thread-safe."""

    def __init__(self, decline, timeout):
        self.decline = decline
        self.timeout = timeout
        self.lock = threading.Lock()
        self.answers = {}  # idempotency key -> (status, body)
        self.stalled = set()  # keys whose first request timed out
        self.charged = {}  # order id -> charges made for it
        self.stats = dict(requests=0, charges=0, declined=0, timeouts=0,
                          replayed=0, rejected=0)

    def charge(self, key, order_id, amount):
        """(status, body, stall): the answer to one charge request."""
        with self.lock:
            self.stats["requests"] += 1
            if key in self.answers:
                self.stats["replayed"] += 1
                return (*self.answers[key], 0)
            bucket = fnv1a(order_id) % 100
            if bucket < self.decline:
                self.stats["declined"] += 1
                answer = (402, {"error": {"code": "card_declined",
                                          "message": "the card was declined"}})
            elif bucket < self.decline + self.timeout and key not in self.stalled:
                self.stalled.add(key)
                self.stats["timeouts"] += 1
                return 504, {"error": {"code": "timeout",
                                       "message": "the card network did not answer"}}, 1
            else:
                self.stats["charges"] += 1
                self.charged[order_id] = self.charged.get(order_id, 0) + 1
                answer = (200, {"charge_id": "ch_%016x" % fnv1a("charge:" + key),
                                "order_id": order_id, "amount": amount,
                                "status": "succeeded"})
            self.answers[key] = answer
            return (*answer, 0)

    def snapshot(self):
        with self.lock:
            doubled = sum(1 for n in self.charged.values() if n > 1)
            return dict(self.stats, keys=len(self.answers), double_charged=doubled)


def handler(ledger, stall_ms):
    class Handler(JsonHandler):
        def do_GET(self):
            if self.path == "/stats":
                self.answer(200, ledger.snapshot())
            else:
                self.answer(404, {"error": {"code": "not_found"}})

        def do_POST(self):
            raw = self.body()
            if self.path != "/v1/charges":
                return self.answer(404, {"error": {"code": "not_found"}})
            key = self.headers.get("Idempotency-Key")
            try:
                charge = json.loads(raw)
                order_id, amount = str(charge["order_id"]), charge["amount"]
            except (ValueError, KeyError, TypeError):
                order_id = None
            if not key or order_id is None:
                with ledger.lock:
                    ledger.stats["rejected"] += 1
                return self.answer(400, {"error": {
                    "code": "bad_request",
                    "message": "needs an Idempotency-Key and a JSON body with order_id and amount"}})
            status, body, stall = ledger.charge(key, order_id, amount)
            if stall:
                time.sleep(stall_ms / 1000)
            self.answer(status, body)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--decline-percent", type=int, default=10)
    parser.add_argument("--timeout-percent", type=int, default=20)
    parser.add_argument("--stall-ms", type=int, default=150)
    args = parser.parse_args()
    ledger = Ledger(args.decline_percent, args.timeout_percent)
    serve(handler(ledger, args.stall_ms), args.port)


if __name__ == "__main__":
    main()
