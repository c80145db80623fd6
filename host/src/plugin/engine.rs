//! The wasmtime engine's settings, shared by the runtime that runs plugins
//! and the child process that compiles them: both must make the same code
//! (the cache's entries are keyed by this engine's fingerprint).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances: the resolution of time limits, and how
/// often a long-running call yields to other work.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The engine's settings; `pooling`: a pooling allocator with slots for
/// that many component instances.
pub(super) fn engine_config(pooling: Option<usize>) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed);
    if let Some(instances) = pooling {
        let instances = instances as u32;
        let mut pool = PoolingAllocationConfig::default();
        // Slots are virtual reservations; memory is committed only as used.
        pool.total_component_instances(instances)
            .total_core_instances(4 * instances)
            .total_memories(2 * instances)
            .total_tables(4 * instances)
            .total_stacks(instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memory_size(4 << 30);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
pub(super) fn start_epoch_clock(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-clock".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch clock thread");
}

/// Which engine compiles: a SHA-256 (hex) of everything that makes its code
/// compatible or not (settings, version), so entries of another engine are
/// never taken for this one's.
pub(super) fn engine_fingerprint(engine: &Engine) -> String {
    /// Feeds what is hashed into SHA-256 instead of a 64-bit hash.
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut sha = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut sha);
    hex::encode(sha.0.finalize())
}
