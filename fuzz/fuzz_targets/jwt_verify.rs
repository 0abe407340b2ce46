#![no_main]
//! JWT header and claims parsing behind the HS256 verifier. Input byte 0 picks the mode:
//! even — the rest is a token as a client sends it; odd — the rest is `header JSON \n claims
//! JSON`, signed here with the gateway's key so the claims checks are reached (`NOW` and `LATER`
//! in the claims become the current time and ten minutes on).
use std::sync::OnceLock;
use std::time::Duration;

use authgate::auth::jwt::JwtKeys;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "Zq3vN8xT1bKp6wRy0eLs4uHj9cMa2dGf7iVo5nXtQkWbEzYr";
const MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

fn keys() -> &'static JwtKeys {
    static K: OnceLock<JwtKeys> = OnceLock::new();
    K.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("authgate-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("hs256.secret");
        std::fs::write(&secret, SECRET).unwrap();
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nmode = \"jwt\"\n\n[auth.jwt]\n\
             algorithm = \"HS256\"\nsigning_key = \"{}\"\nissuer = \"authgate\"\naudience = \"authgate\"\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\n",
            secret.display()
        );
        let cfg = authgate::Config::from_toml_str(&toml, &dir.join("gateway.toml"))
            .unwrap_or_else(|e| panic!("fuzz config: {e}"));
        let k = JwtKeys::load(cfg.auth.jwt.as_ref().unwrap()).expect("HS256 keys load");
        let _ = std::fs::remove_dir_all(&dir);
        k
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(signing_input: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, signing_input.as_bytes()).as_ref())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    let t = now();
    if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        // Anyone can spell a token, nobody but the key holder can sign one: never accepted.
        assert!(
            k.verify(token, t, MAX_LIFETIME).is_err(),
            "unsigned input accepted: {token:?}"
        );
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (header, claims) = text.split_once('\n').unwrap_or((text, "{}"));
    let claims = claims
        .replace("LATER", &(t + 600).to_string())
        .replace("NOW", &t.to_string());
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    let token = format!("{input}.{}", sign(&input));
    let Ok(v) = k.verify(&token, t, MAX_LIFETIME) else {
        return;
    };
    // Accepted: the header named exactly our algorithm, the claims are what they said.
    let h: serde_json::Value = serde_json::from_str(header).expect("accepted header is JSON");
    assert_eq!(h["alg"], "HS256", "{header}");
    assert!(h.get("crit").is_none(), "{header}");
    let c: serde_json::Value = serde_json::from_str(&claims).expect("accepted claims are JSON");
    assert_eq!(c["sub"].as_str(), Some(v.sub.as_str()));
    assert_eq!(c["jti"].as_str(), Some(v.jti.as_str()));
    assert_eq!(c["iss"], "authgate", "{claims}");
    assert!(!v.sub.is_empty() && !v.jti.is_empty() && !v.sid.is_empty());
    assert!(
        v.exp + k.leeway().as_secs() >= t,
        "expired token accepted: {claims}"
    );
    assert!(v.auth_time <= t + k.leeway().as_secs());
    assert!(t.saturating_sub(v.auth_time) <= MAX_LIFETIME.as_secs());
    // A flipped signature bit is refused.
    let mut bad = token.into_bytes();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    assert!(k
        .verify(std::str::from_utf8(&bad).unwrap(), t, MAX_LIFETIME)
        .is_err());
});
