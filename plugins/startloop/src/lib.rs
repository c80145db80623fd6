//! Hostile test plugin whose start function never returns.
//!
//! The core module exports `_initialize` (a WASI reactor's initializer),
//! which the component runs while it is being instantiated, before any
//! `handle`: this one loops forever. The host must stop it at the event's
//! time limit like a `handle` that loops, and keep serving everything else.

use eventhost_plugin::{Event, Failure, Guest};

/// The reactor initializer: loops forever; `black_box` keeps the optimiser
/// from deleting the loop.
#[no_mangle]
pub extern "C" fn _initialize() {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

struct StartLoop;

impl Guest for StartLoop {
    fn handle(_event: Event) -> Result<(), Failure> {
        // Never reached: instantiation never ends.
        eventhost_plugin::state_set("handled", "yes");
        Ok(())
    }
}

eventhost_plugin::export!(StartLoop);
