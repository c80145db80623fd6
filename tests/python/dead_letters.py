"""Works a subscriber's DLQ with LeanMQ's tools, as an operator would.

  read:    `get_dead_letter_queue(queue).get_messages(count=...)`; prints
           {"messages": [{id, data, timestamp, delivery_count}]}.
  requeue: `requeue_messages(ids, get_queue(queue))`; prints {"requeued": n}.
"""

from common import connect, emit, fail, message_json, parser


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--queue", required=True, help="LeanMQ's short name, e.g. sub:probe")
    sub = p.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read")
    read.add_argument("--count", type=int, default=10)
    requeue = sub.add_parser("requeue")
    requeue.add_argument("ids", nargs="+", help="DLQ stream ids, as get_messages returned them")
    args = p.parse_args()
    mq = connect(args)

    dlq = mq.get_dead_letter_queue(args.queue)
    if dlq is None:
        fail(f"get_dead_letter_queue({args.queue!r}) found no DLQ")
    if args.command == "read":
        emit({"messages": [message_json(m) for m in dlq.get_messages(count=args.count)]})
    else:
        destination = mq.get_queue(args.queue)
        if destination is None:
            fail(f"get_queue({args.queue!r}) found no queue")
        requeued = dlq.requeue_messages(args.ids, destination)
        if requeued != len(args.ids):
            fail(f"requeued {requeued} of {len(args.ids)} messages")
        emit({"requeued": requeued})
    mq.close()


if __name__ == "__main__":
    main()
