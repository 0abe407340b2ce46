//! Telemetry: the access log and other log lines through a bounded queue to a writer thread,
//! Prometheus metrics updated with atomics, audit events, trace context. Nothing here blocks a
//! worker thread or takes a lock per request.

pub mod access;
pub mod audit;
pub mod metrics;
pub mod server;
pub mod sink;
pub mod trace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, LogFormat};

/// The telemetry of one gateway, shared by all its snapshots.
#[derive(Debug)]
pub struct Telemetry {
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Audit events.
    pub audit: audit::Audit,
    /// Where the access log goes (the process's stderr sink).
    pub access: sink::Sink,
    /// `AUTHGATE_LOG_FORMAT`, read once: it overrides `[log] format`.
    format_override: Option<LogFormat>,
    /// Set by SIGHUP: the audit file is reopened before the next write.
    reopen: Arc<AtomicBool>,
}

/// `[audit] file`: appended to, mode 0600, reopened by path when asked (log rotation).
struct AuditFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    reopen: Arc<AtomicBool>,
}

impl AuditFile {
    fn open(path: std::path::PathBuf, reopen: Arc<AtomicBool>) -> std::io::Result<AuditFile> {
        let file = Self::open_path(&path)?;
        Ok(AuditFile { path, file, reopen })
    }

    fn open_path(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(path)
    }
}

impl std::io::Write for AuditFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.reopen.swap(false, Ordering::AcqRel) {
            match Self::open_path(&self.path) {
                Ok(f) => self.file = f,
                // Keep the old file rather than lose events; said once per attempt.
                Err(e) => tracing::warn!(
                    file = %self.path.display(),
                    error = %e,
                    "cannot reopen the audit file; still writing to the old one"
                ),
            }
        }
        self.file.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Unix time in seconds.
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `AUTHGATE_LOG_FORMAT` (`json` or `text`), if set.
pub fn format_override() -> Option<LogFormat> {
    match std::env::var("AUTHGATE_LOG_FORMAT").as_deref() {
        Ok("json") => Some(LogFormat::Json),
        Ok("text") => Some(LogFormat::Text),
        _ => None,
    }
}

impl Telemetry {
    /// Telemetry for a gateway configured by `config`: opens the audit file, if any.
    pub fn new(config: &Config) -> Result<Arc<Telemetry>, String> {
        Telemetry::make(config, true)
    }

    /// Telemetry that opens no file (a snapshot built only to be checked or measured): audit
    /// events go to the log stream.
    pub fn detached(config: &Config) -> Arc<Telemetry> {
        Telemetry::make(config, false).expect("randomness for the audit hash key")
    }

    fn make(config: &Config, open_files: bool) -> Result<Arc<Telemetry>, String> {
        let format_override = format_override();
        let format = format_override.unwrap_or(config.log.format);
        let a = &config.audit;
        let reopen = Arc::new(AtomicBool::new(false));
        let (audit_sink, audit_format) = match a.file.as_ref().filter(|_| open_files) {
            Some(path) => {
                let f = AuditFile::open(path.clone(), reopen.clone())
                    .map_err(|e| format!("audit.file: cannot open {}: {e}", path.display()))?;
                let sink = sink::Sink::spawn("authgate-audit", Box::new(f))
                    .map_err(|e| format!("cannot start the audit writer: {e}"))?;
                (sink, LogFormat::Json)
            }
            // Its own queue even on stderr: a flood of requests filling the access log's queue
            // must not crowd audit events out (the Stderr lock keeps whole batches apart).
            None if open_files => (
                sink::Sink::spawn("authgate-audit", Box::new(std::io::stderr()))
                    .map_err(|e| format!("cannot start the audit writer: {e}"))?,
                format,
            ),
            None => (sink::stderr().clone(), format),
        };
        let key = match &a.username_hash_key {
            Some(k) => k.expose().as_bytes().to_vec(),
            None => {
                let mut k = vec![0u8; 32];
                // Without randomness the hash key would be guessable: refuse to run.
                getrandom::fill(&mut k).map_err(|e| format!("no randomness: {e}"))?;
                k
            }
        };
        let backend = match config.store {
            crate::config::StoreConfig::Memory => "memory",
            crate::config::StoreConfig::Redis(_) => "redis",
        };
        Ok(Arc::new(Telemetry {
            metrics: metrics::Metrics::new(backend, config.metrics.listen.is_some()),
            audit: audit::Audit::new(a.enabled, audit_sink, audit_format, &key),
            access: sink::stderr().clone(),
            format_override,
            reopen,
        }))
    }

    /// Asks the audit writer to reopen `[audit] file` before its next write (after logrotate
    /// moved it away: SIGHUP). Never blocks; a failed reopen keeps writing to the old file.
    pub fn reopen_files(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// The log format in force for `config`.
    pub fn format(&self, config: &Config) -> LogFormat {
        self.format_override.unwrap_or(config.log.format)
    }

    /// Waits (at most `timeout`) until queued access-log lines and audit events are written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let a = self.access.flush(timeout);
        let b = self.audit.flush(timeout);
        a && b
    }
}
