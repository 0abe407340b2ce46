//! Telemetry: the access log and other log lines through a bounded queue to a writer thread,
//! Prometheus metrics updated with atomics, audit events, trace context. Nothing here blocks a
//! worker thread or takes a lock per request.

pub mod access;
pub mod audit;
pub mod metrics;
pub mod server;
pub mod sink;
pub mod trace;

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
        let (audit_sink, audit_format) = match a.file.as_ref().filter(|_| open_files) {
            Some(path) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                let f = o
                    .open(path)
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
        }))
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
