//! What plugins may hold of the host's file descriptors.
//!
//! A plugin with a folder grant opens files with real descriptors of the
//! host process. Unbounded, one plugin could open files until the process
//! hits its limit, and then other subscribers could not open their grants,
//! nor the host read a plugin to reload it or talk to Redis. So the
//! descriptors plugins hold are counted: one instance holds at most
//! [`PER_INSTANCE`], one subscriber at most a quarter of what plugins may
//! hold together, and plugins together at most what leaves the host its
//! [reserve](FileBudget::new). Past a bound, opening fails in the plugin
//! (WASI `quota`), as it would at a limit of the system.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::plugins_descriptor_share;

/// Descriptors one instance may hold: open files and folders, its granted
/// folders included.
pub const PER_INSTANCE: usize = 64;

/// The descriptors plugins may hold, all together.
pub struct FileBudget {
    limit: usize,
    used: AtomicUsize,
    share: usize,
}

impl FileBudget {
    /// A budget of the plugins' share of the descriptor limit
    /// ([`plugins_descriptor_share`]); the soft limit is raised to the hard
    /// one first.
    pub fn new() -> Arc<Self> {
        Self::with_limit(plugins_descriptor_share(raise_nofile_limit()))
    }

    /// A budget of `limit` descriptors.
    pub fn with_limit(limit: usize) -> Arc<Self> {
        Arc::new(FileBudget {
            limit,
            used: AtomicUsize::new(0),
            share: (limit / 4).max(1),
        })
    }

    /// What plugins may hold together.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("one instance may hold {PER_INSTANCE} open files")]
    Instance,
    #[error("one subscriber may hold {0} open files")]
    Subscriber(usize),
    #[error("plugins together may hold {0} open files (the rest is the host's reserve)")]
    Host(usize),
}

/// One instance's descriptors, counted against its subscriber's share and
/// the budget; given back when dropped.
pub struct InstanceFiles {
    budget: Arc<FileBudget>,
    /// What the subscriber's instances hold together.
    subscriber: Arc<AtomicUsize>,
    held: usize,
}

impl InstanceFiles {
    /// An instance holding nothing yet.
    pub fn new(budget: Arc<FileBudget>, subscriber: Arc<AtomicUsize>) -> Self {
        InstanceFiles {
            budget,
            subscriber,
            held: 0,
        }
    }

    /// Counts the instance as holding `now` descriptors, if that is within
    /// every bound; else nothing changes.
    pub fn hold(&mut self, now: usize) -> Result<(), Refused> {
        if now <= self.held {
            self.release(self.held - now);
            return Ok(());
        }
        if now > PER_INSTANCE {
            return Err(Refused::Instance);
        }
        let more = now - self.held;
        let share = self.budget.share;
        if self.subscriber.fetch_add(more, Ordering::AcqRel) + more > share {
            self.subscriber.fetch_sub(more, Ordering::AcqRel);
            return Err(Refused::Subscriber(share));
        }
        let limit = self.budget.limit;
        if self.budget.used.fetch_add(more, Ordering::AcqRel) + more > limit {
            self.budget.used.fetch_sub(more, Ordering::AcqRel);
            self.subscriber.fetch_sub(more, Ordering::AcqRel);
            return Err(Refused::Host(limit));
        }
        self.held = now;
        Ok(())
    }

    /// Counts the instance as holding what it really holds: `now`, which
    /// the caller knows to be no more than before (files closed since).
    pub fn settle(&mut self, now: usize) {
        if now < self.held {
            self.release(self.held - now);
        }
    }

    fn release(&mut self, n: usize) {
        self.held -= n;
        self.subscriber.fetch_sub(n, Ordering::AcqRel);
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for InstanceFiles {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

/// Raises the soft limit on open files to the hard one (the default soft
/// limit, often 1024, is a relic); returns the limit in force.
fn raise_nofile_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .min(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_subscribers_and_plugins_together_are_bounded() {
        let budget = FileBudget::with_limit(200);
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut one = InstanceFiles::new(budget.clone(), a.clone());
        assert_eq!(one.hold(PER_INSTANCE + 1), Err(Refused::Instance));
        one.hold(40).unwrap();
        let mut two = InstanceFiles::new(budget.clone(), a.clone());
        // The subscriber's share is 50.
        assert_eq!(two.hold(11), Err(Refused::Subscriber(50)));
        two.hold(10).unwrap();
        // Others are not held back by it.
        let mut others: Vec<InstanceFiles> = (0..3)
            .map(|_| InstanceFiles::new(budget.clone(), Arc::new(AtomicUsize::new(0))))
            .collect();
        for other in &mut others {
            other.hold(50).unwrap();
        }
        // 200 held: nothing more for anyone.
        let mut three = InstanceFiles::new(budget.clone(), b.clone());
        assert_eq!(three.hold(1), Err(Refused::Host(200)));
        one.settle(0);
        three.hold(1).unwrap();
        drop(two);
        assert_eq!(a.load(Ordering::Relaxed), 0);
        assert_eq!(budget.used.load(Ordering::Relaxed), 151);
        drop(others);
        drop(three);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }
}
