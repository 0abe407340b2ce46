//! W3C Trace Context (`traceparent`): the gateway is an intermediary that does not trace. The
//! header goes to the upstream unchanged; its trace id is only read for the logs.

/// A trace id as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// The trace id of a valid `traceparent` value (`version-traceid-parentid-flags`); `None`
    /// for anything else, including the invalid all-zero ids and version `ff`.
    pub fn parse(v: &[u8]) -> Option<TraceId> {
        // version 2, trace id 32, parent id 16, flags 2, dashes 3; later versions may append
        // `-…` fields (W3C §3.2.4: parse the known part, ignore the rest).
        if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let (ver, tid, pid, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        if !hex(ver) || !hex(tid) || !hex(pid) || !hex(flags) || ver == b"ff" {
            return None;
        }
        if ver == b"00" && v.len() != 55 {
            return None;
        }
        if tid.iter().all(|b| *b == b'0') || pid.iter().all(|b| *b == b'0') {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(tid);
        Some(TraceId(id))
    }

    /// The trace id of a request's `traceparent`, if it has exactly one valid one.
    pub fn of(headers: &http::HeaderMap) -> Option<TraceId> {
        let mut all = headers.get_all(&TRACEPARENT).iter();
        let first = all.next()?;
        if all.next().is_some() {
            return None;
        }
        TraceId::parse(first.as_bytes())
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

/// `traceparent`
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_valid_values_give_their_trace_id_and_invalid_ones_none() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceId::parse(ok).unwrap().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A future version with an extra field is read; version 00 with one is not.
        assert!(
            TraceId::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some()
        );
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(
                TraceId::parse(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
