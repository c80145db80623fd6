"""Publishes events to eventhost the three ways LeanMQ producers do.

1. `create_queue_pair("all")` + `Queue.send_message`, the event carrying its
   own `event_id`;
2. a `LeanMQ.transaction()` sending two events atomically, one with an
   `event_id` field, one identified only by LeanMQ's `message_id`
   (`_metadata.id`);
3. the LeanMQ EventBus example: `Event` objects serialised with `to_dict()`
   (`event_id`, `timestamp`, `event_type` = class name) and sent with
   `send_message`, as `EventBus.publish` does.

Prints {"send_message": [id], "transaction": [id, id], "event_bus": [id, id]}:
the ids a subscriber sees as each event's id.
"""

import time
import uuid

from common import connect, emit, parser


class Event:
    """The base event of LeanMQ's EventBus example."""

    def __init__(self, event_id=None):
        self.event_id = event_id or str(uuid.uuid4())
        self.timestamp = time.time()
        self.event_type = self.__class__.__name__

    def to_dict(self):
        return {"event_id": self.event_id, "timestamp": self.timestamp, "event_type": self.event_type}


class Ping(Event):
    pass


class OrderCreatedEvent(Event):
    def __init__(self, order_id, user_id, total, items, event_id=None):
        super().__init__(event_id)
        self.order_id = order_id
        self.user_id = user_id
        self.total = total
        self.items = items

    def to_dict(self):
        data = super().to_dict()
        data.update({"order_id": self.order_id, "user_id": self.user_id, "total": self.total, "items": self.items})
        return data


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    mq = connect(args)
    events, _dlq = mq.create_queue_pair("all")

    plain = str(uuid.uuid4())
    events.send_message({"event_type": "Ping", "event_id": plain, "via": "send_message"})

    with_field = str(uuid.uuid4())
    metadata_only = str(uuid.uuid4())
    with mq.transaction() as tx:
        tx.send_message(events, {"event_type": "Ping", "event_id": with_field, "via": "transaction"})
        tx.send_message(events, {"event_type": "Ping", "via": "transaction"}, message_id=metadata_only)

    bus = [Ping(), OrderCreatedEvent("o-1", "u-1", 99.5, [{"sku": "A", "qty": 2}])]
    for event in bus:
        events.send_message(event.to_dict())

    emit(
        {
            "send_message": [plain],
            "transaction": [with_field, metadata_only],
            "event_bus": [e.event_id for e in bus],
        }
    )
    mq.close()


if __name__ == "__main__":
    main()
