"""Reads a stream eventhost writes as a LeanMQ consumer of its own.

The reader is a `leanmq.Queue` on the stream with a consumer group of its own
(so it takes nothing from eventhost's group).

  join: creates the group as LeanMQ does (at `$`: entries added from now on);
        prints {"group": ...}.
  read: `get_messages` until --count messages arrived (or --timeout seconds),
        then `acknowledge_messages`; prints {"messages": [...], "acked": n}.
"""

import time

from common import PREFIX, Queue, connect, emit, fail, message_json, parser


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--queue", required=True, help="LeanMQ's short name, e.g. sub:audit")
    p.add_argument("--group", required=True, help="the reader's own consumer group")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("join")
    read = sub.add_parser("read")
    read.add_argument("--count", type=int, required=True)
    read.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()
    mq = connect(args)

    reader = Queue(mq.client, PREFIX + args.queue, args.group)
    if args.command == "join":
        emit({"group": reader.consumer_group})
    else:
        messages = []
        deadline = time.monotonic() + args.timeout
        while len(messages) < args.count:
            if time.monotonic() > deadline:
                fail(f"got {len(messages)} of {args.count} messages within {args.timeout} s")
            messages += reader.get_messages(count=args.count - len(messages), block_for_seconds=1)
        acked = reader.acknowledge_messages([m.id for m in messages])
        emit({"messages": [message_json(m) for m in messages], "acked": acked})
    mq.close()


if __name__ == "__main__":
    main()
