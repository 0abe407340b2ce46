//! The one way log output leaves the process: a bounded queue drained by a writer thread.
//!
//! Workers hand an [`Entry`] to [`Sink::push`], which never blocks: when the queue is full the
//! entry is dropped and counted. The writer thread formats entries (access records and audit
//! events are formatted there, not on the worker), writes them in batches and, when lines were
//! dropped, says so in the stream itself at most every [`DROP_WARNING_INTERVAL`].

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::access::AccessRecord;
use super::audit::AuditEvent;
use crate::config::LogFormat;

/// Entries a sink queues at most. At 256 bytes an entry this is 4 MiB: about half a second
/// of traffic at full speed (20 ms batches need a fortieth of it), enough to ride out a consumer's hiccup, small enough to notice a dead one.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Bytes written per `write()` at most (a batch of lines).
const BATCH_BYTES: usize = 256 * 1024;
/// After writing a batch that emptied the queue, the writer waits this long before looking
/// again: lines accumulate meanwhile, so under load one `write()` carries hundreds of them, and
/// a worker's `try_send` never has a sleeping receiver to wake (a futex call per request).
/// A line reaches the destination at most this much later.
/// (At 5 ms the writer's sleeps and wake-ups were a fifth of its CPU under load.)
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// How often a sink that dropped lines says so in its own stream.
pub const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What a sink writes.
// An access record is held in the channel's preallocated slot itself (its path inline): boxing
// it would put an allocation per request back on the worker, and a free on the writer thread.
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    /// A line already formatted (ordinary log events from `tracing`).
    Line(Box<[u8]>),
    /// A request, formatted on the writer thread.
    Access(AccessRecord, LogFormat),
    /// An audit event, formatted on the writer thread.
    Audit(Box<AuditEvent>, LogFormat),
    /// Everything queued before this is written and flushed; then the sender is answered.
    Flush(mpsc::Sender<()>),
}

/// What a sink holds: access, audit and other lines are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Ordinary log lines.
    Log = 0,
    /// Access log lines.
    Access = 1,
    /// Audit events.
    Audit = 2,
}

impl Stream {
    /// All of them, in label order.
    pub const ALL: [Stream; 3] = [Stream::Log, Stream::Access, Stream::Audit];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Log => "log",
            Stream::Access => "access",
            Stream::Audit => "audit",
        }
    }

    fn of(e: &Entry) -> Option<Stream> {
        match e {
            Entry::Line(_) => Some(Stream::Log),
            Entry::Access(..) => Some(Stream::Access),
            Entry::Audit(..) => Some(Stream::Audit),
            Entry::Flush(_) => None,
        }
    }
}

/// Counters a sink keeps (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct SinkStats {
    dropped: [AtomicU64; 3],
    written: [AtomicU64; 3],
    write_errors: AtomicU64,
}

impl SinkStats {
    /// Entries of `s` dropped because the queue was full.
    pub fn dropped(&self, s: Stream) -> u64 {
        self.dropped[s as usize].load(Ordering::Relaxed)
    }
    /// Entries of `s` written.
    pub fn written(&self, s: Stream) -> u64 {
        self.written[s as usize].load(Ordering::Relaxed)
    }
    /// Failed writes (the destination refused a batch).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
}

/// A bounded queue and the thread that empties it into one destination.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Entry>,
    stats: Arc<SinkStats>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("stats", &self.stats).finish()
    }
}

impl Sink {
    /// Starts a writer thread named `name` writing to `out`. The thread ends when the last
    /// `Sink` clone is dropped, after writing what was queued.
    pub fn spawn(name: &str, out: Box<dyn Write + Send>) -> std::io::Result<Sink> {
        Self::spawn_with_capacity(name, out, QUEUE_CAPACITY)
    }

    /// [`Sink::spawn`] with a queue of `capacity` entries.
    pub fn spawn_with_capacity(
        name: &str,
        out: Box<dyn Write + Send>,
        capacity: usize,
    ) -> std::io::Result<Sink> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let stats = Arc::new(SinkStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || writer(rx, out, &st))?;
        Ok(Sink { tx, stats })
    }

    /// Queues `e`; never blocks. A full queue drops it (counted).
    pub fn push(&self, e: Entry) {
        let stream = Stream::of(&e);
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if let Some(s) = stream {
                    self.stats.dropped[s as usize].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written and flushed.
    /// Returns whether it was. For shutdown and tests, never for a request.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = mpsc::channel();
        let mut e = Entry::Flush(ack);
        loop {
            match self.tx.try_send(e) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    e = back;
                    // Only on shutdown or in tests, off the request path.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }
}

fn writer(rx: Receiver<Entry>, mut out: Box<dyn Write + Send>, stats: &SinkStats) {
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 4096);
    let mut acks: Vec<mpsc::Sender<()>> = Vec::new();
    let mut reported = [0u64; 3];
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let got = first.is_some();
        let mut emptied = true;
        if let Some(e) = first {
            take(e, &mut buf, &mut acks, stats);
            emptied = false;
            while buf.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(e) => take(e, &mut buf, &mut acks, stats),
                    Err(_) => {
                        emptied = true;
                        break;
                    }
                }
            }
        }
        let due = last_warning.is_none_or(|t| t.elapsed() >= DROP_WARNING_INTERVAL);
        if due {
            let now: [u64; 3] = std::array::from_fn(|i| stats.dropped[i].load(Ordering::Relaxed));
            if now != reported {
                let lost: Vec<String> = Stream::ALL
                    .iter()
                    .filter(|s| now[**s as usize] > reported[**s as usize])
                    .map(|s| {
                        format!(
                            "{} {}",
                            now[*s as usize] - reported[*s as usize],
                            s.as_str()
                        )
                    })
                    .collect();
                let _ = writeln!(
                    buf,
                    "{}  WARN authgate::telemetry: log queue full, lines dropped (the log consumer is slower than the traffic): {}",
                    humantime::format_rfc3339_micros(std::time::SystemTime::now()),
                    lost.join(", ")
                );
                reported = now;
                last_warning = Some(Instant::now());
            }
        }
        if !buf.is_empty() {
            if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            buf.clear();
        }
        for a in acks.drain(..) {
            let _ = a.send(());
        }
        if got && emptied {
            std::thread::sleep(BATCH_INTERVAL);
        }
    }
    if !buf.is_empty() {
        let _ = out.write_all(&buf);
    }
    let _ = out.flush();
    for a in acks.drain(..) {
        let _ = a.send(());
    }
}

fn take(e: Entry, buf: &mut Vec<u8>, acks: &mut Vec<mpsc::Sender<()>>, stats: &SinkStats) {
    let stream = Stream::of(&e);
    match e {
        Entry::Line(l) => buf.extend_from_slice(&l),
        Entry::Access(r, f) => r.format(f, buf),
        Entry::Audit(a, f) => a.format(f, buf),
        Entry::Flush(ack) => acks.push(ack),
    }
    if let Some(s) = stream {
        stats.written[s as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The process's stderr sink, started on first use: the access log, the audit stream without a
/// file, and (through [`StderrWriter`]) every other log line share it, so lines never interleave.
pub fn stderr() -> &'static Sink {
    static STDERR: OnceLock<Sink> = OnceLock::new();
    STDERR.get_or_init(|| {
        Sink::spawn("authgate-log", Box::new(std::io::stderr()))
            .expect("cannot start the log writer thread")
    })
}

/// A `tracing_subscriber` writer that hands each formatted event to the stderr sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrWriter;

/// One event's bytes, queued when dropped.
pub struct EventBuf(Vec<u8>);

impl Write for EventBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            stderr().push(Entry::Line(std::mem::take(&mut self.0).into_boxed_slice()));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = EventBuf;
    fn make_writer(&'a self) -> EventBuf {
        EventBuf(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A destination tests can read, optionally blocked until released.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<Mutex<()>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _gate = self.1.lock().unwrap();
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_entry_stays_small_enough_for_the_preallocated_queue() {
        // 16,384 slots of this size are allocated per sink when it starts.
        let size = std::mem::size_of::<Entry>();
        assert!(size <= 256, "Entry is {size} bytes");
    }

    #[test]
    fn sink_writes_lines_in_order_and_flush_waits_for_them() {
        let out = Shared::default();
        let sink = Sink::spawn("t", Box::new(out.clone())).unwrap();
        for i in 0..1000 {
            sink.push(Entry::Line(format!("{i}\n").into_bytes().into()));
        }
        assert!(sink.flush(Duration::from_secs(10)));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().enumerate().all(|(i, l)| *l == i.to_string()));
        assert_eq!(sink.stats().written(Stream::Log), 1000);
        assert_eq!(sink.stats().dropped(Stream::Log), 0);
    }

    /// [`Shared`] that says when a write has begun (and so is stuck behind the gate).
    struct Announcing(Shared, mpsc::Sender<()>);

    impl Write for Announcing {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.1.send(());
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sink_with_a_blocked_destination_drops_and_counts_instead_of_waiting() {
        let out = Shared::default();
        let gate = out.1.clone();
        let held = gate.lock().unwrap();
        let (entered, writing) = mpsc::channel();
        let sink =
            Sink::spawn_with_capacity("t", Box::new(Announcing(out.clone(), entered)), 8).unwrap();
        // One line first, and wait until the writer is stuck writing it: from then on nothing
        // drains the queue (otherwise a writer running beside the pushes would batch thousands
        // of them before its first write, and fewer would be dropped).
        sink.push(Entry::Line(b"first\n".to_vec().into()));
        writing
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer never started writing");
        let start = Instant::now();
        for i in 1..10_000 {
            sink.push(Entry::Line(format!("{i}\n").into_bytes().into()));
        }
        // Ten thousand pushes against a stuck writer return at once (no waiting anywhere).
        assert!(start.elapsed() < Duration::from_secs(5));
        let dropped = sink.stats().dropped(Stream::Log);
        assert!(dropped > 9_000, "{dropped}");
        drop(held);
        assert!(sink.flush(Duration::from_secs(10)));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("lines dropped"), "{text}");
        assert_eq!(
            sink.stats().written(Stream::Log) + dropped,
            10_000,
            "every line is either written or counted as dropped"
        );
    }
}
