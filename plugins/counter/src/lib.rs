//! A plugin whose every event is a read-modify-write of shared state: it
//! adds one to `count` and the event's `amount` to `balance:<account>`.
//! Run at any concurrency on any number of hosts, both must end exact:
//! the lost-update tests count on it.

use eventhost_plugin::{Event, Failure, Guest};

#[derive(serde::Deserialize)]
struct Transfer {
    account: String,
    amount: i64,
}

struct Counter;

impl Guest for Counter {
    fn handle(event: Event) -> Result<(), Failure> {
        let transfer: Transfer = eventhost_plugin::data(&event)?;
        eventhost_plugin::state_increment("count")?;
        let key = format!("balance:{}", transfer.account);
        let balance: i64 = match eventhost_plugin::state_get(&key) {
            Some(text) => text
                .parse()
                .map_err(|_| Failure::Reject(format!("{key} holds {text:?}, not a number")))?,
            None => 0,
        };
        eventhost_plugin::state_set(&key, &(balance + transfer.amount).to_string());
        Ok(())
    }
}

eventhost_plugin::export!(Counter);
