//! Access-log records: built on the worker from what the request already holds (no formatting),
//! formatted on the sink's writer thread.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Version};
use smallvec::SmallVec;

use super::trace::TraceId;
use crate::config::LogFormat;

/// Bytes of a path the record holds itself; a longer path is put on the heap.
pub const INLINE_PATH: usize = 64;

/// The longest path kept in full: a queue full of 64 KiB paths (a request head may be that long)
/// would hold a gigabyte.
pub const MAX_LOGGED_PATH: usize = 1024;

/// A request path as the access record keeps it: up to [`INLINE_PATH`] bytes inline, so for most
/// requests the worker allocates nothing and the writer thread frees nothing the worker allocated
/// (a free from another thread was the writer's largest cost after `write()` itself); cut (on a
/// character boundary, marked `…`) past [`MAX_LOGGED_PATH`].
#[derive(Clone)]
pub struct LoggedPath(SmallVec<[u8; INLINE_PATH]>);

impl std::fmt::Debug for LoggedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl LoggedPath {
    /// The path `p` as logged.
    pub fn new(p: &str) -> LoggedPath {
        if p.len() <= MAX_LOGGED_PATH {
            return LoggedPath(SmallVec::from_slice(p.as_bytes()));
        }
        let mut end = MAX_LOGGED_PATH;
        while !p.is_char_boundary(end) {
            end -= 1;
        }
        let mut v = SmallVec::with_capacity(end + '…'.len_utf8());
        v.extend_from_slice(&p.as_bytes()[..end]);
        v.extend_from_slice("…".as_bytes());
        LoggedPath(v)
    }

    /// The path. Always the text given to [`LoggedPath::new`] (or its cut form).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }

    /// Whether it is held inline (no heap allocation).
    pub fn inline(&self) -> bool {
        !self.0.spilled()
    }
}

/// One request, as the access log shows it. Never a secret: no query string, no header values.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the response head was ready.
    pub time: SystemTime,
    /// The request id sent back in `X-Request-Id`.
    pub request_id: [u8; 16],
    /// The peer address.
    pub client: SocketAddr,
    /// Method.
    pub method: Method,
    /// Path only (the query string may carry tokens).
    pub path: LoggedPath,
    /// HTTP version.
    pub version: Version,
    /// The route's name, if one matched.
    pub route: Option<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// Time to the response head.
    pub latency_us: u64,
    /// Body size when known in advance.
    pub bytes: Option<u64>,
    /// The W3C trace id from `traceparent`, when the request carried a valid one.
    pub trace_id: Option<TraceId>,
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Writes `s` for a text line: as is when it is plain, else quoted and escaped (a path may hold
/// characters a log reader would take for a field separator).
pub(crate) fn text_value(buf: &mut Vec<u8>, s: &str) {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=');
    if plain {
        buf.extend_from_slice(s.as_bytes());
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// Writes `s` as a JSON string.
pub(crate) fn json_str(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Appends `n` in decimal.
fn push_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the peer address as `Display` would (`1.2.3.4:5`, `[::1]:5`), without the
/// formatting machinery for the common IPv4 case.
fn push_addr(buf: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(itoa::Buffer::new().format(*o).as_bytes());
            }
            buf.push(b':');
            push_u64(buf, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(buf, "{a}");
        }
    }
}

std::thread_local! {
    /// The formatted second of the last record ("2026-12-02T18:34:49."): records arrive in
    /// time order, so the calendar arithmetic runs once a second, not once a line.
    static SECOND: std::cell::RefCell<(u64, [u8; 20])> = const { std::cell::RefCell::new((u64::MAX, [0; 20])) };
}

/// Appends `t` as RFC 3339 UTC with microseconds, like `humantime::format_rfc3339_micros`.
pub(crate) fn push_time(buf: &mut Vec<u8>, t: SystemTime) {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            let whole = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(secs),
            )
            .to_string();
            // "YYYY-MM-DDTHH:MM:SSZ": keep everything before the 'Z'.
            let head = whole.as_bytes();
            if head.len() == 20 {
                prefix[..19].copy_from_slice(&head[..19]);
                prefix[19] = b'.';
                *cached = secs;
            } else {
                // A year past 9999: no cache, the slow path.
                let _ = write!(
                    buf,
                    "{}",
                    humantime::format_rfc3339_micros(t.max(std::time::UNIX_EPOCH))
                );
                return;
            }
        }
        buf.extend_from_slice(&prefix[..]);
        let micros = d.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut m = micros;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (m % 10) as u8;
            m /= 10;
        }
        buf.extend_from_slice(&digits);
        buf.push(b'Z');
    });
}

impl AccessRecord {
    /// Appends the record as one line in `format`. Runs on the sink's writer thread, once per
    /// request: written with plain byte pushes (no `fmt` machinery per field).
    pub fn format(&self, format: LogFormat, buf: &mut Vec<u8>) {
        let rid = std::str::from_utf8(&self.request_id).unwrap_or("-");
        let route = self.route.as_deref().unwrap_or("-");
        match format {
            LogFormat::Text => {
                push_time(buf, self.time);
                buf.extend_from_slice(b"  INFO access: request_id=");
                buf.extend_from_slice(rid.as_bytes());
                buf.extend_from_slice(b" client=");
                push_addr(buf, &self.client);
                buf.extend_from_slice(b" method=");
                text_value(buf, self.method.as_str());
                buf.extend_from_slice(b" path=");
                text_value(buf, self.path.as_str());
                buf.extend_from_slice(b" version=");
                buf.extend_from_slice(version_str(self.version).as_bytes());
                buf.extend_from_slice(b" route=");
                text_value(buf, route);
                buf.extend_from_slice(b" status=");
                push_u64(buf, u64::from(self.status));
                buf.extend_from_slice(b" latency_us=");
                push_u64(buf, self.latency_us);
                if let Some(b) = self.bytes {
                    buf.extend_from_slice(b" bytes=");
                    push_u64(buf, b);
                }
                if let Some(t) = &self.trace_id {
                    buf.extend_from_slice(b" trace_id=");
                    buf.extend_from_slice(t.as_str().as_bytes());
                }
                buf.push(b'\n');
            }
            LogFormat::Json => {
                buf.extend_from_slice(b"{\"timestamp\":\"");
                push_time(buf, self.time);
                buf.extend_from_slice(
                    b"\",\"level\":\"INFO\",\"target\":\"access\",\"request_id\":\"",
                );
                buf.extend_from_slice(rid.as_bytes());
                buf.extend_from_slice(b"\",\"client\":\"");
                push_addr(buf, &self.client);
                buf.extend_from_slice(b"\",\"method\":");
                json_str(buf, self.method.as_str());
                buf.extend_from_slice(b",\"path\":");
                json_str(buf, self.path.as_str());
                buf.extend_from_slice(b",\"version\":\"");
                buf.extend_from_slice(version_str(self.version).as_bytes());
                buf.extend_from_slice(b"\",\"route\":");
                json_str(buf, route);
                buf.extend_from_slice(b",\"status\":");
                push_u64(buf, u64::from(self.status));
                buf.extend_from_slice(b",\"latency_us\":");
                push_u64(buf, self.latency_us);
                if let Some(b) = self.bytes {
                    buf.extend_from_slice(b",\"bytes\":");
                    push_u64(buf, b);
                }
                if let Some(t) = &self.trace_id {
                    buf.extend_from_slice(b",\"trace_id\":\"");
                    buf.extend_from_slice(t.as_str().as_bytes());
                    buf.push(b'"');
                }
                buf.extend_from_slice(b"}\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_path_keeps_short_paths_inline_and_cuts_long_ones_on_a_character_boundary() {
        let short = LoggedPath::new("/a/b");
        assert_eq!(short.as_str(), "/a/b");
        assert!(short.inline());
        let edge = "/".repeat(INLINE_PATH);
        assert!(LoggedPath::new(&edge).inline());
        let longer = format!("/{edge}");
        let p = LoggedPath::new(&longer);
        assert_eq!(p.as_str(), longer);
        assert!(!p.inline());
        let long = format!("/{}", "é".repeat(MAX_LOGGED_PATH));
        let cut = LoggedPath::new(&long);
        let cut = cut.as_str();
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_LOGGED_PATH + '…'.len_utf8());
        assert!(long.starts_with(cut.trim_end_matches('…')));
        let exact = "x".repeat(MAX_LOGGED_PATH);
        assert_eq!(LoggedPath::new(&exact).as_str(), exact);
    }

    fn record(path: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: *b"0123456789abcdef",
            client: "127.0.0.1:5000".parse().unwrap(),
            method: Method::GET,
            path: LoggedPath::new(path),
            version: Version::HTTP_11,
            route: Some(Arc::from("app")),
            status: 200,
            latency_us: 12,
            bytes: Some(5),
            trace_id: TraceId::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        }
    }

    #[test]
    fn access_record_json_is_one_object_with_the_fields_and_the_trace_id() {
        let mut buf = Vec::new();
        record("/a\"b\nc").format(LogFormat::Json, &mut buf);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["path"], "/a\"b\nc");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "app");
        assert_eq!(v["request_id"], "0123456789abcdef");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn access_record_text_quotes_a_path_that_could_forge_fields_or_lines() {
        let mut buf = Vec::new();
        record("/x y=1\nz").format(LogFormat::Text, &mut buf);
        let line = String::from_utf8(buf).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#"path="/x y=1\nz""#), "{line}");
        assert!(line.contains(" status=200 "), "{line}");
        assert!(
            line.ends_with("trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"),
            "{line}"
        );
    }

    #[test]
    fn fast_time_and_address_formatting_match_the_standard_formatters() {
        let times = [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::new(1_796_236_489, 0),
            SystemTime::UNIX_EPOCH + Duration::new(1_796_236_489, 999_999_999),
            SystemTime::UNIX_EPOCH + Duration::new(1_796_236_490, 1_000),
            SystemTime::UNIX_EPOCH + Duration::new(1_796_236_489, 123_456_000),
            SystemTime::UNIX_EPOCH + Duration::new(951_782_400, 42_000), // 2000-02-29
        ];
        for t in times {
            let mut buf = Vec::new();
            push_time(&mut buf, t);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
        for a in [
            "127.0.0.1:5000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:443",
            "[fe80::1]:8",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut buf = Vec::new();
            push_addr(&mut buf, &addr);
            assert_eq!(String::from_utf8(buf).unwrap(), addr.to_string());
        }
    }
}
