// Notification service of the orders example, in JavaScript (LeanMQ's
// event-driven microservices example rebuilt as eventhost plugins).
//
// Subscribed to every event type ("*"). For orders created, paid and shipped
// it "sends" a notification, which in this example means logging it through
// the host at info level, and counts what it sent in state: `notified` and
// `notified:<event_type>`. When its config has `webhook_url`, it also queues
// one webhook per notification, a POST of {event_type, order_id, subject}
// to that URL that the host sends only once the event is committed (with an
// Idempotency-Key, retried; never if the handler fails). Any other event is
// ignored.
//
// The rules live here, apart from app.js, so plain Node tests can run them
// against the SDK's fake host (app.js imports the component's host).

import { Reject, config, log, postJsonAfterCommit, state } from "./sdk/core.js";

// What each event type needs from its data, and the notification it makes.
const NOTICES = {
  OrderCreatedEvent: {
    fields: { order_id: "string", user_id: "string", total: "number" },
    subject: "Order Confirmation",
    body: (e) => `Hi ${e.user_id}, your order ${e.order_id} has been received. Total: $${e.total.toFixed(2)}`,
  },
  PaymentProcessedEvent: {
    fields: { order_id: "string", amount: "number", status: "string" },
    subject: "Payment Confirmation",
    body: (e) => `Payment of $${e.amount.toFixed(2)} for order ${e.order_id} has ${e.status}.`,
  },
  OrderShippedEvent: {
    fields: { order_id: "string", tracking_number: "string", carrier: "string" },
    subject: "Order Shipped",
    body: (e) => `Your order ${e.order_id} has been shipped via ${e.carrier}. Tracking number: ${e.tracking_number}`,
  },
};

/** The notification (`{subject, body}`) an event calls for; null for event
 * types nobody is notified about. Data that does not match its event type
 * will never do: `Reject`. */
export function notificationFor(eventType, data) {
  const notice = Object.hasOwn(NOTICES, eventType) ? NOTICES[eventType] : null;
  if (notice === null) return null;
  for (const [field, type] of Object.entries(notice.fields)) {
    if (typeof data[field] !== type) {
      throw new Reject(`malformed ${eventType}: \`${field}\` is not a ${type}`);
    }
  }
  return { subject: notice.subject, body: notice.body(data) };
}

/** The handler: log the notification, count it, and queue its webhook
 * when one is configured (sent after the commit, so a failed event never
 * announces anything). */
export function handleEvent(event) {
  let notification;
  try {
    notification = notificationFor(event.eventType, event.data);
  } catch (err) {
    if (err instanceof Reject) throw new Reject(`event ${event.id}: ${err.reason}`);
    throw err;
  }
  if (notification === null) return;
  log.info(`[${notification.subject}] ${notification.body}`);
  state.increment("notified");
  state.increment(`notified:${event.eventType}`);
  const webhook = config.get("webhook_url");
  if (webhook !== null) {
    postJsonAfterCommit(webhook, {
      event_type: event.eventType,
      order_id: event.data.order_id,
      subject: notification.subject,
    });
  }
}
