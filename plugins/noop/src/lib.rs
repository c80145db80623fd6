//! The cheapest possible plugin: every event is handled, nothing is done.
//! Benchmarks use it to measure the bus and the host, not a handler.

use eventhost_plugin::{Event, Failure, Guest};

struct Noop;

impl Guest for Noop {
    fn handle(_event: Event) -> Result<(), Failure> {
        Ok(())
    }
}

eventhost_plugin::export!(Noop);
