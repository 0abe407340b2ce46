//! Resident memory per session: creates N sessions (default 1,000,000; `SESSIONS=N` overrides) in
//! the real session store and reports the RSS growth divided by N. Linux only (/proc/self/statm).
//!
//! Run: `cargo bench --bench session_memory`

use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::auth::session::{MemorySessionStore, SessionStore};

// Same allocator as the authgate binary, so the figure is what the gateway process pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes --bench; any other args are ignored.
    let n: u64 = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let users: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("user{i}"))).collect();
    let before = rss_bytes();
    let store = MemorySessionStore::new(
        Duration::from_secs(3600),
        Duration::from_secs(12 * 3600),
        n + 1,
    );
    let t = Instant::now();
    let mut ids = Vec::with_capacity(16);
    for i in 0..n {
        let id = store.insert(users[(i % 1000) as usize].clone(), 0).unwrap();
        if i % (n / 16).max(1) == 0 {
            ids.push(id);
        }
    }
    let elapsed = t.elapsed();
    let after = rss_bytes();
    let live = ids
        .iter()
        .filter(|id| matches!(store.get(id), Ok(Some(_))))
        .count();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "sessions: {n} (entry_count {}), sample still live: {live}/{}",
        store.len(),
        ids.len()
    );
    println!(
        "rss before: {:.1} MiB, after: {:.1} MiB, growth: {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1048576.0
    );
    println!(
        "per session: {per:.0} bytes; created in {:.2?} ({:.0} ns each)",
        elapsed,
        elapsed.as_nanos() as f64 / n as f64
    );
}
