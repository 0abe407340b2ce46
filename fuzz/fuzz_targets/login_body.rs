#![no_main]
//! The login form / JSON body parser: never panics; what it accepts survives a round trip.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let json = sel & 1 == 1;
    let Ok((user, pass, csrf, rd)) = authgate::login::parse_login_body(json, body) else {
        return;
    };
    // Re-encode what was parsed: the parser must read back exactly the same fields.
    let again = if json {
        serde_json::json!({ "username": user, "password": pass, "csrf": csrf, "rd": rd })
            .to_string()
            .into_bytes()
    } else {
        let mut f: Vec<(&str, &str)> = vec![("username", &user), ("password", &pass)];
        if let Some(c) = &csrf {
            f.push(("csrf", c));
        }
        if let Some(r) = &rd {
            f.push(("rd", r));
        }
        let mut s = String::new();
        for (k, v) in f {
            if !s.is_empty() {
                s.push('&');
            }
            s.push_str(k);
            s.push('=');
            s.extend(percent_encoding::utf8_percent_encode(
                v,
                percent_encoding::NON_ALPHANUMERIC,
            ));
        }
        s.into_bytes()
    };
    let back = authgate::login::parse_login_body(json, &again).expect("re-encoded body parses");
    assert_eq!(back, (user, pass, csrf, rd.clone()));
    if let Some(rd) = rd {
        let out = authgate::login::safe_rd(&rd, "https://gateway.test");
        assert!(out == "/" || out == rd);
    }
});
