//! How many plugin instances may live at once, shared fairly between
//! subscribers.
//!
//! The pooling allocator has a fixed number of instance slots; past them,
//! instantiating fails. One subscriber with a high `concurrency` could take
//! every slot and the others' events would fail for no fault of their own.
//! So every live instance (running or idle) holds a permit: one subscriber
//! holds at most its [share](InstanceCapacity::share) of them, a subscriber
//! short of permits waits for one in turn (first come, first served), and
//! while anyone waits, idle instances are dropped to make room. Running out
//! is a wait, reported as [`CapacityError`] if it lasts, never a failure of
//! the event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often a waiter drops an idle instance somewhere while it waits.
const EVICT_EVERY: Duration = Duration::from_millis(10);

/// Something holding idle instances that can give one up.
pub trait Evict: Send + Sync {
    /// Drops one idle instance, if it holds any; how many it held before.
    fn evict_one(&self) -> usize;
    /// How many idle instances it holds.
    fn idle(&self) -> usize;
}

/// No instance could be had in time: every slot is in use, or the
/// subscriber holds its share. The event waits and runs later; it is not
/// an attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no plugin instance free within {waited:?} (the subscriber holds {held} of its share of \
     {share}; the pool of {total} is shared by every subscriber)"
)]
pub struct CapacityError {
    pub waited: Duration,
    pub held: usize,
    pub share: usize,
    pub total: usize,
}

/// Whether `err` (instantiating, or opening what an instance needs) is the
/// host running short of descriptors or memory (EMFILE, ENFILE, ENOMEM)
/// rather than anything the plugin did: a shortage is waited out like a
/// full pool, never the event's dead letter. Wasmtime reports the errno
/// as an `io::Error` or through its own error's text (`(os error N)`).
pub fn is_host_shortage(err: &anyhow::Error) -> bool {
    const SHORT: [i32; 3] = [libc::EMFILE, libc::ENFILE, libc::ENOMEM];
    err.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.raw_os_error().is_some_and(|code| SHORT.contains(&code));
        }
        let text = cause.to_string();
        SHORT
            .iter()
            .any(|code| text.contains(&format!("(os error {code})")))
    })
}

/// The instance slots of one engine.
pub struct InstanceCapacity {
    permits: Arc<Semaphore>,
    total: usize,
    share: usize,
    /// Acquirers waiting now: while any wait, instances given back are
    /// dropped instead of kept idle.
    waiting: AtomicUsize,
    pools: Mutex<Vec<Weak<dyn Evict>>>,
}

/// One subscriber's part: at most its share of live instances.
pub struct Share {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Share {
    /// Live instances it holds now.
    pub fn held(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// A live instance's hold on the pool; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _global: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
}

impl InstanceCapacity {
    /// Slots for `total` live instances; one subscriber may hold a quarter
    /// of them (at least one), so it takes four abusers to fill the pool,
    /// and even then every waiter is served in turn.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(InstanceCapacity {
            permits: Arc::new(Semaphore::new(total)),
            total,
            share: (total / 4).max(1),
            waiting: AtomicUsize::new(0),
            pools: Mutex::default(),
        })
    }

    /// The most live instances one subscriber may hold.
    pub fn share(&self) -> usize {
        self.share
    }

    /// A subscriber's part, for one that runs `concurrency` events at once.
    pub fn share_for(&self, concurrency: usize) -> Share {
        let limit = concurrency.clamp(1, self.share);
        Share {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Makes `pool`'s idle instances available for eviction while others
    /// wait.
    pub fn register(&self, pool: Weak<dyn Evict>) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// Whether someone waits for a slot: an instance given back now should
    /// be dropped, not kept idle.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Drops one idle instance, from the pool that keeps the most; whether
    /// there was one.
    pub fn evict_idle(&self) -> bool {
        let pools: Vec<Arc<dyn Evict>> = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        pools
            .iter()
            .max_by_key(|p| p.idle())
            .is_some_and(|p| p.evict_one() > 0)
    }

    /// A slot for a new instance of the subscriber with `share`, waiting
    /// at most `wait` (in turn with every other waiter).
    pub async fn acquire(&self, share: &Share, wait: Duration) -> Result<Slot, CapacityError> {
        let deadline = tokio::time::Instant::now() + wait;
        let refused = || CapacityError {
            waited: wait,
            held: share.held(),
            share: share.limit,
            total: self.total,
        };
        // The subscriber's own share first: waiting there costs no one else.
        let own = match share.permits.clone().try_acquire_owned() {
            Ok(own) => own,
            Err(_) => tokio::time::timeout_at(deadline, share.permits.clone().acquire_owned())
                .await
                .map_err(|_| refused())?
                .expect("the semaphore is never closed"),
        };
        if let Ok(global) = self.permits.clone().try_acquire_owned() {
            return Ok(Slot {
                _global: global,
                _own: own,
            });
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        // One future for the whole wait keeps this waiter's place in line.
        let acquire = self.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut evict = tokio::time::interval(EVICT_EVERY);
        loop {
            tokio::select! {
                global = &mut acquire => {
                    let global = global.expect("the semaphore is never closed");
                    return Ok(Slot { _global: global, _own: own });
                }
                _ = evict.tick() => {
                    self.evict_idle();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    drop(own);
                    return Err(refused());
                }
            }
        }
    }
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of idle slots, for eviction.
    struct Idle(Mutex<Vec<Slot>>);

    impl Evict for Idle {
        fn evict_one(&self) -> usize {
            let mut idle = self.0.lock().unwrap();
            let n = idle.len();
            drop(idle.pop());
            n
        }
        fn idle(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn one_subscriber_holds_at_most_its_share() {
        let capacity = InstanceCapacity::new(8);
        assert_eq!(capacity.share(), 2);
        let hog = capacity.share_for(1024);
        let a = capacity.acquire(&hog, SHORT).await.unwrap();
        let _b = capacity.acquire(&hog, SHORT).await.unwrap();
        let err = capacity.acquire(&hog, SHORT).await.unwrap_err();
        assert_eq!((err.held, err.share, err.total), (2, 2, 8), "{err}");
        // Another subscriber still gets in.
        let other = capacity.share_for(1);
        let _c = capacity.acquire(&other, SHORT).await.unwrap();
        drop(a);
        capacity.acquire(&hog, SHORT).await.unwrap();
    }

    #[test]
    fn running_out_of_descriptors_or_memory_is_the_hosts_shortage() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_host_shortage(
            &anyhow::Error::from(emfile).context("failed to create memfd")
        ));
        // As wasmtime words an errno it does not keep as an io::Error.
        let enomem = std::io::Error::from_raw_os_error(libc::ENOMEM).to_string();
        assert!(is_host_shortage(&anyhow::anyhow!("mmap failed: {enomem}")));
        assert!(!is_host_shortage(&anyhow::anyhow!(
            "wasm trap: unreachable"
        )));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_host_shortage(&anyhow::Error::from(denied)));
    }

    #[tokio::test]
    async fn a_waiter_gets_an_idle_instance_evicted() {
        let capacity = InstanceCapacity::new(4);
        let idle = Arc::new(Idle(Mutex::default()));
        let weak: Weak<dyn Evict> = Arc::downgrade(&idle) as Weak<dyn Evict>;
        capacity.register(weak);
        // Four subscribers fill the pool; two of them leave theirs idle.
        let shares: Vec<Share> = (0..5).map(|_| capacity.share_for(1)).collect();
        let mut busy = Vec::new();
        for share in &shares[..4] {
            busy.push(capacity.acquire(share, SHORT).await.unwrap());
        }
        idle.0.lock().unwrap().extend(busy.drain(..2));
        assert!(!capacity.contended());
        let slot = capacity
            .acquire(&shares[4], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(idle.idle(), 1, "one idle instance made room");
        drop(slot);
    }

    #[tokio::test]
    async fn a_full_pool_is_a_capacity_error_after_the_wait() {
        let capacity = InstanceCapacity::new(1);
        let a = capacity.share_for(1);
        let b = capacity.share_for(1);
        let _held = capacity.acquire(&a, SHORT).await.unwrap();
        let started = std::time::Instant::now();
        let err = capacity.acquire(&b, SHORT).await.unwrap_err();
        assert!(started.elapsed() >= SHORT);
        assert_eq!(err.held, 0);
        assert!(
            !capacity.contended(),
            "a waiter that gave up is not counted"
        );
    }
}
