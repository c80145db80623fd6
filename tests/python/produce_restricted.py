"""Publishes Ping events as a LeanMQ producer whose Redis user may only append to the ingress.

The producer authenticates with a password only (LeanMQ 0.2 has no user
name), so it is Redis's `default` user, which the ACL test restricts to
XADD on `events:all` and reading the queue's metadata. It finds the queue
with `get_queue("all")` (reads only) and sends with `send_message` (XADD),
as a LeanMQ producer does once the queue exists.

Prints {"sent": [id, ...]}.
"""

import uuid

from common import PREFIX, LeanMQ, emit, fail, parser


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--password", required=True)
    p.add_argument("--count", type=int, default=5)
    args = p.parse_args()
    mq = LeanMQ(redis_host="127.0.0.1", redis_port=args.port, redis_db=0, redis_password=args.password, prefix=PREFIX)
    events = mq.get_queue("all")
    if events is None:
        fail("LeanMQ found no queue `all`: eventhost creates it with its metadata at start")
    sent = []
    for _ in range(args.count):
        event_id = str(uuid.uuid4())
        events.send_message({"event_type": "Ping", "event_id": event_id})
        sent.append(event_id)
    emit({"sent": sent})
    mq.close()


if __name__ == "__main__":
    main()
