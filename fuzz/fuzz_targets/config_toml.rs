#![no_main]
//! The TOML config parser and validator: never panics, refusals name what is wrong.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative key/users files resolve there and fail to read.
    let path = std::path::Path::new("/nonexistent-authgate-fuzz/gateway.toml");
    match authgate::Config::from_toml_str(text, path) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal lists at least one problem");
            assert!(!e.to_string().is_empty());
        }
    }
});
