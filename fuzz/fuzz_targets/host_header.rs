#![no_main]
//! Host validation: whatever is accepted is host[:port]; the router's host is a clean prefix.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.insert(http::header::HOST, v.clone());
    if !authgate::pipeline::host_header_ok(&h) {
        return;
    }
    let s = v.to_str().expect("an accepted Host is ASCII");
    let host = authgate::pipeline::route::host_without_port(s);
    assert!(!host.is_empty(), "{s:?}: empty host");
    assert!(
        !host
            .bytes()
            .any(|c| matches!(c, b'/' | b'?' | b'#' | b'@' | b'\\' | b' ')),
        "{s:?}: host {host:?} has a delimiter"
    );
    let rest = if s.starts_with('[') {
        let end = s.find(']').expect("accepted bracket form is closed");
        assert_eq!(&s[1..end], host);
        &s[end + 1..]
    } else {
        assert!(s.starts_with(host));
        &s[host.len()..]
    };
    if let Some(port) = rest.strip_prefix(':') {
        assert!(
            !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()),
            "{s:?}: port {port:?}"
        );
    } else {
        assert!(rest.is_empty(), "{s:?}: {rest:?} after the host");
    }
    // A second Host line is always refused.
    h.append(http::header::HOST, v);
    assert!(!authgate::pipeline::host_header_ok(&h));
});
