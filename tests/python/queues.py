"""Looks at eventhost's queues with LeanMQ's own tools.

Prints:
  queues:  `list_queues()`, one object per queue;
  lookups: for each queue given with --queue (LeanMQ's short name, e.g.
           `sub:probe`), what `get_queue` and `get_dead_letter_queue` return;
  info:    with --info, `get_info()` of those queues and their DLQs.
"""

import dataclasses

from common import connect, emit, fail, parser


def describe(queue):
    return {"name": queue.name, "consumer_group": queue.consumer_group, "is_dlq": queue.is_dlq}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--queue", action="append", default=[], help="a queue to look up, e.g. sub:probe")
    p.add_argument("--info", action="store_true", help="also call Queue.get_info()")
    args = p.parse_args()
    mq = connect(args)

    result = {
        "queues": [dataclasses.asdict(q) for q in mq.list_queues()],
        "lookups": {},
        "info": {},
    }
    for name in args.queue:
        queue = mq.get_queue(name)
        if queue is None:
            fail(f"get_queue({name!r}) found no queue")
        dlq = mq.get_dead_letter_queue(name)
        if dlq is None:
            fail(f"get_dead_letter_queue({name!r}) found no DLQ")
        result["lookups"][name] = {"queue": describe(queue), "dlq": describe(dlq)}
        if args.info:
            for q in (queue, dlq):
                result["info"][q.name] = dataclasses.asdict(q.get_info())
    emit(result)
    mq.close()


if __name__ == "__main__":
    main()
