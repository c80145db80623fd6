//! Test plugin that always panics (a trap, for the host), so tests can check
//! that a crashing handler dead-letters the event and the panic message,
//! which names the event, reaches the logs.

use eventhost_plugin::{Event, Failure, Guest};

struct Panic;

impl Guest for Panic {
    fn handle(event: Event) -> Result<(), Failure> {
        panic!("panic plugin: deliberate panic on event {}", event.id)
    }
}

eventhost_plugin::export!(Panic);
