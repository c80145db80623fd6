//! The memory budget of one plugin instance.
//!
//! `memory_mb` bounds everything an instance can grow, all its linear
//! memories and tables together: a plugin with two memories must not get
//! twice its budget.

use wasmtime::ResourceLimiter;

/// Enforces `memory_mb` on everything an instance can grow, all its linear
/// memories and tables together, and remembers that it did, so a trap that
/// follows is reported as running out of memory rather than as a crash.
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes granted so far: memories, and tables at 8 bytes an element.
    used: usize,
    /// A growth was refused since the last reset.
    pub hit: bool,
}

/// What a table element costs against the budget.
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            used: 0,
            hit: false,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Grants growing something from `current` to `desired` bytes if the
    /// instance stays within its budget.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let used = self.used - current.min(self.used) + desired;
        if used > self.limit {
            self.hit = true;
            return false;
        }
        self.used = used;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_covers_every_memory_and_table_together() {
        let mut limiter = MemoryLimiter::new(100 << 20);
        // Two memories of 40 MiB fit; a third does not.
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(limiter.hit);
        // Growing one of them counts only the difference.
        assert!(limiter.memory_growing(40 << 20, 50 << 20, None).unwrap());
        // Tables draw on the same budget (90 MiB used): 2M elements are 16 MB.
        assert!(!limiter.table_growing(0, 2_000_000, None).unwrap());
        assert!(limiter.table_growing(0, 1000, None).unwrap());
    }
}
