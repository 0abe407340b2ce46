//! Password verification on dedicated low-priority threads.
//!
//! argon2 takes tens of milliseconds of CPU per attempt. On tokio's blocking pool those threads
//! compete with the proxy's workers as equals, so a stream of logins showed up directly in the
//! latency of everybody else's requests (a 50 logins/s storm raised authenticated p99 8× on two
//! cores). These threads run under Linux's SCHED_IDLE policy: the scheduler preempts them as soon
//! as a proxy thread wakes up (a merely niced thread still delayed the proxy by milliseconds under
//! the EEVDF scheduler), so logins use the CPU the proxy leaves idle. On a CPU-saturated gateway
//! logins therefore wait (and time out with 429) rather than slow everybody down. The number of threads bounds concurrent hashing (and its
//! ~19 MiB per attempt); callers also hold a semaphore permit so the queue in front is bounded.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of hashing threads. Dropping it ends the threads once their queue is drained.
pub struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HashPool {
    /// Starts `threads` low-priority threads.
    pub fn new(threads: usize) -> HashPool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("authgate-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        HashPool {
            jobs: Mutex::new(tx),
        }
    }

    /// Runs `f` on a hashing thread and waits for its result without blocking the runtime.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .map_err(|_| "hash pool poisoned".to_string())?
            .send(job)
            .map_err(|_| "hash pool stopped".to_string())?;
        rx.await
            .map_err(|_| "password check failed (thread ended)".to_string())
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(error = ?e, "cannot lower the priority of a password hashing thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_pool_runs_jobs_and_returns_results() {
        let p = HashPool::new(2);
        let a = p.run(|| 2 + 2);
        let b = p.run(|| "x".repeat(3));
        assert_eq!(a.await.unwrap(), 4);
        assert_eq!(b.await.unwrap(), "xxx");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hash_pool_threads_run_under_sched_idle() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let p = HashPool::new(1);
        let policy = p
            .run(thread_priority::thread_schedule_policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        let here = thread_priority::thread_schedule_policy().unwrap();
        assert_ne!(here, policy, "the caller's thread keeps its policy");
    }
}
