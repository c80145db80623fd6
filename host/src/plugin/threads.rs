//! Where plugin code runs: light calls on the bus's thread, heavy ones on
//! threads of their own subscriber's, at a lower CPU priority.
//!
//! Guest code yields every epoch tick, but on a runtime shared with the
//! bus a yield only lets the next task in line run: a subscriber whose
//! calls spin (a start function that loops, a flood of effects or logs)
//! holds the workers most of the time, and every other subscriber's calls,
//! and the bus's own reads and commits, wait in line behind it. So a call
//! that has used [`INLINE_CPU`] of the bus's thread goes on on a small
//! runtime of its subscriber's own, and so do that subscriber's calls for
//! [`HEAVY_FOR`] after: the kernel then shares the CPU between subscribers
//! (one that is mostly idle is run first when it wakes, whatever the
//! others spin), and those threads are niced, so the bus, which reads and
//! commits for everyone, never waits for plugin code. A light call stays
//! where it is: handing every call to another thread would cost two thread
//! wake-ups each, most of what a trivial handler costs. A call that needs
//! a new instance starts on the subscriber's threads and marks nothing: its
//! start functions, and a language runtime's warm-up in its first call, are
//! paid once per instance, and a plugin that traps every time (so every
//! call needs a new instance) never runs on the bus's thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// How much less CPU priority plugin threads have than the host's (a
/// `nice` value): under contention the bus's threads get about nine times
/// their share, so feeding and committing for every subscriber goes on
/// while some plugin spins.
pub const PLUGIN_NICE: i32 = 10;

/// CPU time a call may use on the bus's thread, over all its polls, before it
/// goes on on its subscriber's threads (counted once it has taken as much
/// wall time there: see [`Inline`]): half an epoch tick's worth of guest
/// code, far more than a light handler needs in all.
pub const INLINE_CPU: Duration = Duration::from_millis(1);

/// How long after a heavy call a subscriber's calls start on its own
/// threads: a subscriber that spins pays the hand-off, not the others.
pub const HEAVY_FOR: Duration = Duration::from_secs(1);

/// The threads one subscriber's calls run on.
pub struct PluginThreads {
    subscriber: String,
    threads: usize,
    /// Until when calls start on these threads: a call was heavy.
    heavy_until: Mutex<Option<Instant>>,
    /// `None` once dropped: shut down without waiting, since a call may be
    /// spinning until its deadline.
    runtime: Option<Runtime>,
}

/// The call did not finish: its threads were shut down, or it panicked.
#[derive(Debug, thiserror::Error)]
#[error("the plugin's call stopped on its thread: {0}")]
pub struct CallLost(String);

impl PluginThreads {
    /// Starts `threads` worker threads (at least one) for `subscriber`'s
    /// calls, niced by [`PLUGIN_NICE`].
    pub fn start(subscriber: &str, threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            // Linux shows 15 bytes of a thread's name.
            .thread_name(format!("wasm:{subscriber}"))
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(PluginThreads {
            subscriber: subscriber.to_string(),
            threads,
            heavy_until: Mutex::new(None),
            runtime: Some(runtime),
        })
    }

    /// How many worker threads there are.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `call` and waits for it: if `start_here`, on the caller's
    /// thread until it has used [`INLINE_CPU`] there, then on these
    /// threads; right away on these threads if not, or while the
    /// subscriber is heavy. Dropping the returned future stops the call at
    /// its next yield (every epoch tick for guest code), so a host shutting
    /// down never waits for a plugin.
    pub async fn run<F>(&self, call: F, start_here: bool) -> Result<F::Output, CallLost>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut call = Box::pin(call);
        if start_here && !self.heavy() {
            let inline = Inline {
                call: &mut call,
                wall: Duration::ZERO,
                cpu: Duration::ZERO,
            };
            match inline.await {
                Some(output) => return Ok(output),
                None => self.mark_heavy(),
            }
        }
        let runtime = self.runtime.as_ref().expect("running until dropped");
        let mut task = AbortOnDrop(runtime.spawn(call));
        (&mut task.0).await.map_err(|err| CallLost(err.to_string()))
    }

    fn heavy(&self) -> bool {
        let until = *self.heavy_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    fn mark_heavy(&self) {
        let now = Instant::now();
        let mut until = self.heavy_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_none_or(|until| until <= now) {
            tracing::debug!(
                subscriber = %self.subscriber,
                "a call used over {INLINE_CPU:?} of CPU on the bus's thread: this subscriber's \
                 calls run on its own threads for {HEAVY_FOR:?}"
            );
        }
        *until = Some(now + HEAVY_FOR);
    }
}

impl Drop for PluginThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Polls a call on the caller's thread until it is done (`Some`) or has
/// used [`INLINE_CPU`] there (`None`: it goes on elsewhere, from where it
/// stopped).
///
/// The thread's CPU clock costs a system call (about 0.3 µs, a few per
/// cent of a light call), so it is read only once the call has taken
/// [`INLINE_CPU`] of wall time, which bounds its CPU time until then: a
/// light call reads the cheap wall clock alone, and a light call that was
/// preempted (its wall time is not its cost) is judged by its CPU time
/// from then on.
struct Inline<'a, F> {
    call: &'a mut Pin<Box<F>>,
    /// Wall time of the polls so far.
    wall: Duration,
    /// CPU time of the polls since `wall` reached [`INLINE_CPU`].
    cpu: Duration,
}

impl<F: Future> Future for Inline<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let measured = self.wall >= INLINE_CPU;
        let cpu_started = measured.then(thread_cpu_time);
        let started = Instant::now();
        let polled = self.call.as_mut().poll(cx);
        self.wall += started.elapsed();
        if let Some(cpu_started) = cpu_started {
            self.cpu += thread_cpu_time().saturating_sub(cpu_started);
        }
        match polled {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if self.cpu >= INLINE_CPU => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// CPU time the calling thread has used: what a poll costs the bus, not
/// counting time the thread was preempted (on a busy machine the wall
/// clock would call a light call heavy).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A task that is aborted when its waiter goes away.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread's CPU priority by [`PLUGIN_NICE`] below what
/// it inherited from the host. On Linux a nice value is a thread's own;
/// failing leaves it at the host's, which costs fairness, not correctness.
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread, no memory passed.
    let done = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let inherited = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (inherited + PLUGIN_NICE).min(19))
    };
    if done != 0 {
        tracing::debug!(
            "could not lower a plugin thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn own_nice() -> i32 {
        // SAFETY: reads the calling thread's priority.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    /// Spins `for_each` of CPU time `rounds` times, yielding in between like
    /// guest code at each epoch tick; returns where each round ran.
    async fn spin(rounds: usize, for_each: Duration) -> Vec<(String, i32)> {
        let mut ran = Vec::new();
        for _ in 0..rounds {
            let started = thread_cpu_time();
            while thread_cpu_time() - started < for_each {
                std::hint::spin_loop();
            }
            ran.push((thread_name(), own_nice()));
            tokio::task::yield_now().await;
        }
        ran
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn heavy_calls_go_on_on_niced_threads_of_their_own() {
        let threads = PluginThreads::start("s", 2).unwrap();
        let host = (thread_name(), own_nice());

        let light = threads.run(spin(3, Duration::from_micros(50)), true).await;
        assert_eq!(light.unwrap(), vec![host.clone(); 3], "a light call stays");

        let heavy = threads
            .run(spin(10, Duration::from_micros(400)), true)
            .await;
        let heavy = heavy.unwrap();
        let niced = ("wasm:s".to_string(), (host.1 + PLUGIN_NICE).min(19));
        // 1 ms of wall time (three rounds of 400 µs, fewer if the thread was
        // preempted), then 1 ms of CPU time (three more).
        let moved = heavy.iter().position(|ran| *ran != host).unwrap();
        assert!((4..=6).contains(&moved), "{heavy:?}");
        assert!(heavy[moved..].iter().all(|ran| *ran == niced), "{heavy:?}");
        assert_eq!(own_nice(), host.1, "the caller's thread is untouched");

        let next = threads.run(spin(1, Duration::ZERO), true).await.unwrap();
        assert_eq!(
            next,
            vec![niced],
            "a heavy subscriber's next call starts there"
        );
    }

    #[tokio::test]
    async fn a_call_not_to_start_here_runs_there_and_marks_nothing() {
        let threads = PluginThreads::start("s", 1).unwrap();
        let away = threads.run(spin(1, Duration::ZERO), false).await.unwrap();
        assert_eq!(away[0].0, "wasm:s");
        assert!(!threads.heavy());
        let here = threads.run(spin(1, Duration::ZERO), true).await.unwrap();
        assert_eq!(here[0].0, thread_name());
    }

    #[tokio::test]
    async fn dropping_the_wait_stops_the_call() {
        let threads = PluginThreads::start("s", 1).unwrap();
        threads.mark_heavy();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call = threads.run(
            async move {
                // Holds `tx` until it is stopped: the receiver then sees it go.
                let _tx = tx;
                std::future::pending::<()>().await
            },
            true,
        );
        assert!(tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err());
        assert!(rx.await.is_err(), "the call was stopped and dropped");
    }

    #[tokio::test]
    async fn a_panicking_call_is_lost_and_the_threads_go_on() {
        let threads = PluginThreads::start("s", 1).unwrap();
        threads.mark_heavy();
        let lost = threads
            .run(async { panic!("boom") }, true)
            .await
            .unwrap_err();
        assert!(lost.to_string().contains("panic"), "{lost}");
        let answer = threads.run(async { 42 }, true).await.unwrap();
        assert_eq!(answer, 42, "the threads outlive a panicking call");
    }
}
