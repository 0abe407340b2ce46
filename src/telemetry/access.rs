//! Access-log records: built on the worker from what the request already holds (no formatting),
//! formatted on the sink's writer thread.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Version};

use super::trace::TraceId;
use crate::config::LogFormat;

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
    pub path: String,
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

impl AccessRecord {
    /// Appends the record as one line in `format`.
    pub fn format(&self, format: LogFormat, buf: &mut Vec<u8>) {
        let time = humantime::format_rfc3339_micros(self.time.max(std::time::UNIX_EPOCH));
        let rid = std::str::from_utf8(&self.request_id).unwrap_or("-");
        let route = self.route.as_deref().unwrap_or("-");
        match format {
            LogFormat::Text => {
                let _ = write!(
                    buf,
                    "{time}  INFO access: request_id={rid} client={} method=",
                    self.client
                );
                text_value(buf, self.method.as_str());
                buf.extend_from_slice(b" path=");
                text_value(buf, &self.path);
                let _ = write!(buf, " version={} route=", version_str(self.version));
                text_value(buf, route);
                let _ = write!(
                    buf,
                    " status={} latency_us={}",
                    self.status, self.latency_us
                );
                if let Some(b) = self.bytes {
                    let _ = write!(buf, " bytes={b}");
                }
                if let Some(t) = &self.trace_id {
                    let _ = write!(buf, " trace_id={}", t.as_str());
                }
                buf.push(b'\n');
            }
            LogFormat::Json => {
                let _ = write!(
                    buf,
                    "{{\"timestamp\":\"{time}\",\"level\":\"INFO\",\"target\":\"access\",\"request_id\":\"{rid}\",\"client\":\"{}\",\"method\":",
                    self.client
                );
                json_str(buf, self.method.as_str());
                buf.extend_from_slice(b",\"path\":");
                json_str(buf, &self.path);
                let _ = write!(
                    buf,
                    ",\"version\":\"{}\",\"route\":",
                    version_str(self.version)
                );
                json_str(buf, route);
                let _ = write!(
                    buf,
                    ",\"status\":{},\"latency_us\":{}",
                    self.status, self.latency_us
                );
                if let Some(b) = self.bytes {
                    let _ = write!(buf, ",\"bytes\":{b}");
                }
                if let Some(t) = &self.trace_id {
                    let _ = write!(buf, ",\"trace_id\":\"{}\"", t.as_str());
                }
                buf.extend_from_slice(b"}\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: *b"0123456789abcdef",
            client: "127.0.0.1:5000".parse().unwrap(),
            method: Method::GET,
            path: path.into(),
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
}
