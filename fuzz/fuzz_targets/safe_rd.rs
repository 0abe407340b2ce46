#![no_main]
//! `rd` validation: always a same-origin relative path, also after one percent-decoding.
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else {
        return;
    };
    for origin in ["https://gateway.test", "http://127.0.0.1:8080"] {
        let out = authgate::login::safe_rd(rd, origin);
        common::check_rd(rd, &out);
        // The resolved target keeps the origin.
        let base = url::Url::parse(origin).unwrap();
        let joined = base.join(&out).expect("a safe rd joins");
        assert_eq!(joined.origin(), base.origin(), "{rd:?} -> {out:?}");
    }
});
