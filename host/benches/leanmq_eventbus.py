#!/usr/bin/env python3
"""Baseline for eventhost's benchmark: LeanMQ 0.2's "EventBus + Microservice" pattern.

Runs the pattern from LeanMQ's docs (docs/examples/microservice/*.md) with the real
LeanMQ client against a running redis-server, publishes M `Ping` events that every
service subscribes to, and prints one JSON line with the delivery rate.

Default layout: ONE shared EventBus that knows every subscription, one handler thread
per service. `--per-service-bus` reproduces the docs' layout instead (one EventBus per
Microservice, all reading `events:all` through the same consumer group), where each
event is routed by whichever bus read it, to that bus's service only: deliveries to
the other services are lost, and the output counts them.

    python3 host/benches/leanmq_eventbus.py --port PORT --events M --services 3 [--per-service-bus]
"""

import argparse
import json
import logging
import threading
import time
import uuid

from leanmq import LeanMQ

# LeanMQ calls logging.basicConfig(level=INFO) on import; keep logging out of the timing.
logging.getLogger().setLevel(logging.WARNING)
log = logging.getLogger("leanmq_eventbus")

HOST = "127.0.0.1"
PREFIX = "events:"
EVENT_TYPE = "Ping"
TX_BATCH = 100


class Counter:
    """Thread-safe delivery counter that also remembers when the last delivery happened."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.last = 0.0

    def incr(self):
        now = time.perf_counter()
        with self._lock:
            self.count += 1
            self.last = now

    def read(self):
        with self._lock:
            return self.count, self.last


class EventBus:
    """The docs' EventBus: one processor thread fanning `events:all` out to subscriber queues."""

    def __init__(self, port):
        self.mq = LeanMQ(redis_host=HOST, redis_port=port, prefix=PREFIX)
        self.events_queue, self.events_dlq = self.mq.create_queue_pair("all")
        self.subscribers = {}  # event type -> set of subscription queue names
        self.running = False
        self.thread = None

    def subscribe(self, service_name, event_types):
        queue_name = f"sub:{service_name}"
        # Creates the stream and its group at "$": only events routed after this are seen.
        self.mq.create_queue_pair(queue_name)
        for event_type in event_types:
            self.subscribers.setdefault(event_type, set()).add(queue_name)
        return queue_name

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._process_events, daemon=True)
        self.thread.start()

    def _process_events(self):
        while self.running:
            try:
                messages = self.events_queue.get_messages(count=10, block_for_seconds=1)
                for message in messages:
                    try:
                        event_data = message.data
                        for queue_name in self.subscribers.get(event_data.get("event_type"), ()):
                            try:
                                # As in the docs: get_queue() per delivery. It costs EXISTS,
                                # HGETALL and XGROUP CREATE (BUSYGROUP) before the XADD.
                                queue = self.mq.get_queue(queue_name)
                                if queue:
                                    queue.send_message(event_data)
                            except Exception as e:
                                log.error("Error distributing to %s: %s", queue_name, e)
                        self.events_queue.acknowledge_messages([message.id])
                    except Exception as e:
                        log.error("Error processing event %s: %s", message.id, e)
                        self.events_queue.move_to_dlq(
                            [message.id], f"Processing error: {e}", self.events_dlq
                        )
            except Exception as e:
                log.error("Error in event processor: %s", e)
                time.sleep(1)


class Microservice:
    """The docs' Microservice: one thread draining its subscription queue."""

    def __init__(self, service_name, port, event_bus, counter):
        self.service_name = service_name
        self.counter = counter
        # Own client per service, like the docs (where it comes with the service's own bus);
        # this also keeps a shared bus clear of LeanMQ's 10-connection pool limit.
        self.mq = LeanMQ(redis_host=HOST, redis_port=port, prefix=PREFIX)
        queue_name = event_bus.subscribe(service_name, [EVENT_TYPE])
        self.subscription_queue = self.mq.get_queue(queue_name)
        self.subscription_dlq = self.mq.get_dead_letter_queue(queue_name)
        self.running = False
        self.thread = None

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._handle_events, daemon=True)
        self.thread.start()

    def handle_event(self, event_data):
        # Cheapest possible handler: we measure the bus, not the handler.
        self.counter.incr()
        return True

    def _handle_events(self):
        while self.running:
            try:
                messages = self.subscription_queue.get_messages(count=5, block_for_seconds=1)
                for message in messages:
                    try:
                        if self.handle_event(message.data):
                            self.subscription_queue.acknowledge_messages([message.id])
                        else:
                            self.subscription_queue.move_to_dlq(
                                [message.id], "Event handling returned false", self.subscription_dlq
                            )
                    except Exception as e:
                        log.error("Error handling event: %s", e)
                        self.subscription_queue.move_to_dlq(
                            [message.id], f"Handling error: {e}", self.subscription_dlq
                        )
            except Exception as e:
                log.error("Error in event handler: %s", e)
                time.sleep(1)


def publish(port, events):
    """Publish `events` Ping events to events:all; returns (start time, seconds spent)."""
    mq = LeanMQ(redis_host=HOST, redis_port=port, prefix=PREFIX)
    queue, _ = mq.create_queue_pair("all")  # same stream and group the buses read
    # Same shape as the docs' Event.to_dict().
    payloads = [
        {"event_id": str(uuid.uuid4()), "timestamp": time.time(), "event_type": EVENT_TYPE, "seq": i}
        for i in range(events)
    ]
    # The docs' EventBus.publish() sends one message per call (one round trip each);
    # a LeanMQ user after speed batches them in transactions (one MULTI/EXEC per batch).
    start = time.perf_counter()
    for i in range(0, events, TX_BATCH):
        with mq.transaction() as tx:
            for payload in payloads[i : i + TX_BATCH]:
                tx.send_message(queue, payload)
    return start, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--per-service-bus", action="store_true",
                        help="the docs' layout: one EventBus per Microservice (loses deliveries)")
    args = parser.parse_args()

    # Groups start at "$", so stale streams or groups from an earlier run would skew counts.
    LeanMQ(redis_host=HOST, redis_port=args.port).client.flushall()

    n = args.services
    buses = [EventBus(args.port) for _ in range(n if args.per_service_bus else 1)]
    counters = [Counter() for _ in range(n)]
    services = [
        Microservice(f"service{i}", args.port, buses[i % len(buses)], counters[i]) for i in range(n)
    ]
    for worker in buses + services:
        worker.start()

    start, publish_seconds = publish(args.port, args.events)

    # Wait until every service has handled every event, or nothing moved for 10 s.
    last_total, last_change = -1, time.perf_counter()
    while True:
        counts = [c.read()[0] for c in counters]
        now = time.perf_counter()
        if min(counts) >= args.events:
            break
        if sum(counts) != last_total:
            last_total, last_change = sum(counts), now
        elif now - last_change >= 10:
            break
        time.sleep(0.01)

    for worker in buses + services:
        worker.running = False
    for worker in buses + services:
        worker.thread.join(timeout=5)

    reads = [c.read() for c in counters]
    delivered = sum(count for count, _ in reads)
    seconds = max(last for _, last in reads) - start if delivered else 0.0
    expected = args.events * n
    print(json.dumps({
        "pattern": "leanmq-eventbus-" + ("per-service-bus (docs layout)" if args.per_service_bus
                                         else "shared-bus"),
        "events": args.events,
        "services": n,
        "expected_deliveries": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "seconds": round(seconds, 4),
        "deliveries_per_second": round(delivered / seconds, 1) if seconds else 0.0,
        "publish_seconds": round(publish_seconds, 4),
        "publish": f"transaction() batches of {TX_BATCH}",
        "per_service": [count for count, _ in reads],
    }))


if __name__ == "__main__":
    main()
