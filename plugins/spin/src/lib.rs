//! Test plugin that never returns from `handle`, so tests can check that the
//! host's per-event timeout interrupts it and dead-letters the event.

use eventhost_plugin::{Event, Failure, Guest};

struct Spin;

impl Guest for Spin {
    fn handle(_event: Event) -> Result<(), Failure> {
        let mut n = 0u64;
        loop {
            // `black_box` keeps the optimiser from proving the loop useless.
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

eventhost_plugin::export!(Spin);
