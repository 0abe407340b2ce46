#![no_main]
//! Cookie lookup and removal agree: removal leaves no trace of the name, keeps the other pairs.
use authgate::pipeline::headers::{find_cookie, remove_cookies, CookieLookup};
use libfuzzer_sys::fuzz_target;

/// `(name, pair)` as the removal reads them.
fn pairs(h: &http::HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(|p| p.trim_ascii())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name = match p.iter().position(|&b| b == b'=') {
                Some(i) => p[..i].trim_ascii(),
                None => p,
            };
            (name.to_vec(), p.to_vec())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the name, the rest are Cookie lines separated by '\n'.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let name = ["authgate", "__Host-authgate", "a", "authgate_csrf"][usize::from(sel % 4)];
    let mut h = http::HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            h.append(http::header::COOKIE, v);
        }
    }
    let before = pairs(&h);
    let found = find_cookie(&h, name);
    if let CookieLookup::One(v) = found {
        assert!(
            before
                .iter()
                .any(|(n, p)| n == name.as_bytes() && p.ends_with(v.trim_ascii_end().as_bytes())),
            "found {v:?} but no such pair"
        );
    }
    let mut after_h = h.clone();
    remove_cookies(&mut after_h, &[name]);
    let after = pairs(&after_h);
    assert_eq!(find_cookie(&after_h, name), CookieLookup::Absent);
    assert!(after.iter().all(|(n, _)| n != name.as_bytes()));
    let kept: Vec<_> = before
        .into_iter()
        .filter(|(n, _)| n != name.as_bytes())
        .collect();
    assert_eq!(after, kept, "other pairs changed");
    if found != CookieLookup::Absent {
        assert!(after_h.get_all(http::header::COOKIE).iter().count() <= 1);
    }
});
