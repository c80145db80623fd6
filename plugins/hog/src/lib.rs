//! Test plugin that allocates memory until it is stopped, so tests can check
//! that the host's memory limit turns it into a trap and dead-letters the
//! event instead of exhausting the daemon.

use eventhost_plugin::{Event, Failure, Guest};

/// How much each step allocates.
const CHUNK: usize = 1 << 20;

struct Hog;

impl Guest for Hog {
    fn handle(_event: Event) -> Result<(), Failure> {
        // Every chunk stays alive in `chunks`, so nothing is ever freed.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill writes every page, so the memory is really used.
            chunks.push(std::hint::black_box(vec![1u8; CHUNK]));
        }
    }
}

eventhost_plugin::export!(Hog);
