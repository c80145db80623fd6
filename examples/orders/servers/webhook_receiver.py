#!/usr/bin/env python3
"""The webhook receiver of the orders example: a small real HTTP service.

The notification service queues one webhook per notification, which
eventhost sends only once the event that caused it is committed, and again
(with the same `Idempotency-Key`) until it succeeds. This receiver takes
`POST /hooks` with a JSON body `{"event_type": ..., "order_id": ...}` and
counts what it got: requests, distinct keys, and notifications by type,
each key counted once, as a receiver that deduplicates would.

`GET /stats` answers those counts as JSON. It prints one line,
`listening on http://127.0.0.1:<port>`, once it accepts connections.

    webhook_receiver.py [--port 8472]
"""

import argparse
import json
import threading
from loopback_http import JsonHandler, serve


class Inbox:
    """What arrived, by idempotency key; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys = {}  # idempotency key -> event type
        self.requests = 0
        self.without_key = 0

    def take(self, key, event_type):
        with self.lock:
            self.requests += 1
            if not key:
                self.without_key += 1
            else:
                self.keys.setdefault(key, event_type)

    def snapshot(self):
        with self.lock:
            by_type = {}
            for event_type in self.keys.values():
                by_type[event_type] = by_type.get(event_type, 0) + 1
            return dict(requests=self.requests, keys=len(self.keys),
                        without_key=self.without_key, by_type=by_type)


def handler(inbox):
    class Handler(JsonHandler):

        def do_GET(self):
            if self.path == "/stats":
                self.answer(200, inbox.snapshot())
            else:
                self.answer(404, {"error": "not found"})

        def do_POST(self):
            raw = self.body()
            if self.path != "/hooks":
                return self.answer(404, {"error": "not found"})
            try:
                event_type = str(json.loads(raw)["event_type"])
            except (ValueError, KeyError, TypeError):
                return self.answer(400, {"error": "needs a JSON body with event_type"})
            inbox.take(self.headers.get("Idempotency-Key"), event_type)
            self.answer(200, {"received": True})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8472)
    args = parser.parse_args()
    serve(handler(Inbox()), args.port)


if __name__ == "__main__":
    main()
