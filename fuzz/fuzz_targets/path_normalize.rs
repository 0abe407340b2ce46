#![no_main]
//! Path normalisation: refused or normal, idempotent, no lenient reading escapes its route.
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    // An http::Uri path is ASCII; let the parser decide what it would hand us.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(s) else {
        return;
    };
    let raw = pq.path();
    if let Ok(n) = authgate::pipeline::path::normalize(raw) {
        let borrowed = matches!(n, std::borrow::Cow::Borrowed(_));
        common::check_normalized(raw, &n, borrowed);
    }
});
