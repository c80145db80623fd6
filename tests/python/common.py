"""What every LeanMQ script of the eventhost tests shares.

Each script connects to one test's redis-server with the real LeanMQ 0.2
client, does one thing the way a LeanMQ user would, and prints its findings
as one JSON document on stdout for the Rust test to assert on. Failures exit
non-zero with a message on stderr.
"""

import argparse
import json
import sys

INSTALL_HINT = "pip install leanmq==0.2.0"

try:
    from leanmq import LeanMQ, Queue
except ImportError as err:  # pragma: no cover - depends on the machine
    sys.exit(f"the LeanMQ client is not importable by {sys.executable} ({err}): {INSTALL_HINT}")

# eventhost's key prefix (LeanMQ's EventBus example uses the same).
PREFIX = "events:"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True, help="the test's redis-server port")
    return p


def connect(args: argparse.Namespace) -> LeanMQ:
    """LeanMQ on the test's Redis, with eventhost's prefix."""
    return LeanMQ(redis_host="127.0.0.1", redis_port=args.port, redis_db=0, prefix=PREFIX)


def fail(message: str) -> None:
    """Stops the script with `message`."""
    sys.exit(f"{sys.argv[0]}: {message}")


def emit(result) -> None:
    """Prints the script's result for the Rust side."""
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


def message_json(message) -> dict:
    """A leanmq.Message as JSON."""
    return {
        "id": message.id,
        "data": message.data,
        "timestamp": message.timestamp,
        "delivery_count": message.delivery_count,
    }


__all__ = ["LeanMQ", "Queue", "PREFIX", "parser", "connect", "fail", "emit", "message_json"]
