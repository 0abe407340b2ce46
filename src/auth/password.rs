//! Password hashes: argon2id PHC strings (and bcrypt for htpasswd imports), parsed and checked at
//! load, verified on the low-priority hashing threads (`login::hashing`).

use std::cell::RefCell;
use std::sync::Arc;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, Block};
use subtle::ConstantTimeEq;

/// argon2 memory cost bounds in KiB: below 8 MiB is too cheap to resist GPUs; above 1 GiB a
/// handful of logins would exhaust the machine.
const ARGON2_M_COST: std::ops::RangeInclusive<u32> = 8 * 1024..=1024 * 1024;
/// argon2 passes: 1..=16 covers every recommended profile.
const ARGON2_T_COST: std::ops::RangeInclusive<u32> = 1..=16;
/// argon2 lanes.
const ARGON2_P_COST: std::ops::RangeInclusive<u32> = 1..=16;
/// bcrypt cost bounds: below 8 is trivially brute-forced, above 16 takes seconds per login.
const BCRYPT_COST: std::ops::RangeInclusive<u32> = 8..=16;
/// bcrypt only reads 72 bytes of password; longer ones are refused instead of silently truncated.
pub const BCRYPT_MAX_PASSWORD: usize = 72;

/// An argon2 hash with everything parsed once at load.
pub struct PreparedArgon2 {
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// A parsed, validated password hash.
#[derive(Clone)]
pub enum PasswordHashKind {
    /// argon2 (from a PHC string).
    Argon2(Arc<PreparedArgon2>),
    /// bcrypt `$2b$`/`$2y$`/`$2a$`.
    Bcrypt(String),
    /// No password: an identity an external provider vouched for. Nothing verifies against it.
    None,
}

impl std::fmt::Debug for PasswordHashKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Argon2(_) => "Argon2(..)",
            Self::Bcrypt(_) => "Bcrypt(..)",
            Self::None => "None",
        })
    }
}

/// Checks a configured hash: format and sane cost parameters.
pub fn check_hash(s: &str) -> Result<PasswordHashKind, String> {
    if s.starts_with("$2b$") || s.starts_with("$2y$") || s.starts_with("$2a$") {
        let cost: u32 = s
            .get(4..6)
            .and_then(|c| c.parse().ok())
            .ok_or("malformed bcrypt hash")?;
        if s.len() != 60 {
            return Err("malformed bcrypt hash (expected 60 characters)".into());
        }
        if !BCRYPT_COST.contains(&cost) {
            return Err(format!(
                "bcrypt cost {cost} outside the sane range {BCRYPT_COST:?}"
            ));
        }
        return Ok(PasswordHashKind::Bcrypt(s.to_string()));
    }
    let h = PasswordHash::new(s).map_err(|e| {
        format!("not an argon2 PHC string ({e}); generate one with `authgate hash-password`")
    })?;
    match h.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => {
            return Err(format!(
                "unsupported hash algorithm {other:?} (expected argon2id or bcrypt)"
            ))
        }
    }
    let params =
        argon2::Params::try_from(&h).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    if !ARGON2_M_COST.contains(&params.m_cost()) {
        return Err(format!(
            "argon2 memory cost m={} KiB outside the sane range {ARGON2_M_COST:?}",
            params.m_cost()
        ));
    }
    if !ARGON2_T_COST.contains(&params.t_cost()) {
        return Err(format!(
            "argon2 time cost t={} outside the sane range {ARGON2_T_COST:?}",
            params.t_cost()
        ));
    }
    if !ARGON2_P_COST.contains(&params.p_cost()) {
        return Err(format!(
            "argon2 parallelism p={} outside the sane range {ARGON2_P_COST:?}",
            params.p_cost()
        ));
    }
    let (Some(salt), Some(hash)) = (h.salt, h.hash) else {
        return Err("argon2 PHC string lacks salt or hash".into());
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| format!("invalid argon2 salt: {e}"))?
        .to_vec();
    let algorithm = argon2::Algorithm::new(h.algorithm.as_str()).map_err(|e| e.to_string())?;
    let version = match h.version {
        Some(v) => argon2::Version::try_from(v).map_err(|e| e.to_string())?,
        None => argon2::Version::V0x13,
    };
    Ok(PasswordHashKind::Argon2(Arc::new(PreparedArgon2 {
        algorithm,
        version,
        params,
        salt,
        hash: hash.as_bytes().to_vec(),
    })))
}

thread_local! {
    /// argon2 working memory, kept per hashing thread: allocating (and page-faulting) 19 MiB per
    /// login, then returning it to the OS, costs milliseconds of kernel time and TLB shootdowns
    /// that interrupt the proxy's threads too.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn verify_argon2(p: &PreparedArgon2, password: &[u8]) -> bool {
    let a = Argon2::new(p.algorithm, p.version, p.params.clone());
    let mut out = vec![0u8; p.hash.len()];
    let n = p.params.block_count();
    let done = ARGON2_MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < n {
            m.resize(n, Block::default());
        }
        a.hash_password_into_with_memory(password, &p.salt, &mut out, &mut m[..n])
    });
    done.is_ok() && bool::from(out.ct_eq(&p.hash))
}

/// Verifies a password. CPU-heavy: call on the blocking pool.
pub fn verify(hash: &PasswordHashKind, password: &[u8]) -> bool {
    match hash {
        PasswordHashKind::Argon2(p) => verify_argon2(p, password),
        PasswordHashKind::Bcrypt(h) => {
            if password.len() > BCRYPT_MAX_PASSWORD {
                // Still burn the time so that length does not show in timing.
                let _ = bcrypt::verify(&password[..BCRYPT_MAX_PASSWORD], h);
                return false;
            }
            bcrypt::verify(password, h).unwrap_or(false)
        }
        PasswordHashKind::None => false,
    }
}

/// Hashes a password with argon2id at OWASP's recommended cost (m=19 MiB, t=2, p=1).
pub fn hash(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("OS random generator failed: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = argon2::Params::new(19 * 1024, 2, 1, None).map_err(|e| e.to_string())?;
    let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Cost profile of a hash: two hashes with the same profile take the same time to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Profile {
    Argon2(argon2::Algorithm, argon2::Version, u32, u32, u32, usize),
    Bcrypt(u32),
    None,
}

fn profile(h: &PasswordHashKind) -> Profile {
    match h {
        PasswordHashKind::Argon2(p) => Profile::Argon2(
            p.algorithm,
            p.version,
            p.params.m_cost(),
            p.params.t_cost(),
            p.params.p_cost(),
            p.hash.len(),
        ),
        PasswordHashKind::Bcrypt(h) => {
            Profile::Bcrypt(h.get(4..6).and_then(|c| c.parse().ok()).unwrap_or(12))
        }
        PasswordHashKind::None => Profile::None,
    }
}

/// A hash of a random password, verified for unknown users so that an unknown username takes as
/// long as a wrong password. It copies the cost profile most users have (argon2 parameters or
/// bcrypt cost), or the default profile when there are no users; only users whose hash has an
/// unusual profile remain distinguishable by timing.
pub fn dummy_hash_like<'a>(hashes: impl Iterator<Item = &'a PasswordHashKind>) -> PasswordHashKind {
    let mut counts: Vec<(Profile, usize)> = Vec::new();
    for h in hashes {
        let p = profile(h);
        match counts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => counts.push((p, 1)),
        }
    }
    let mut pw = [0u8; 32];
    let _ = getrandom::fill(&mut pw);
    let made = match counts.into_iter().max_by_key(|(_, n)| *n).map(|(p, _)| p) {
        Some(Profile::Bcrypt(cost)) => bcrypt::hash(pw, cost).map_err(|e| e.to_string()),
        Some(Profile::Argon2(alg, ver, m, t, p, len)) => {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let mut salt = [0u8; 16];
            let _ = getrandom::fill(&mut salt);
            argon2::Params::new(m, t, p, Some(len))
                .map_err(|e| e.to_string())
                .and_then(|params| {
                    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
                    Argon2::new(alg, ver, params)
                        .hash_password(&pw, &salt)
                        .map(|h| h.to_string())
                        .map_err(|e| e.to_string())
                })
        }
        None | Some(Profile::None) => hash(&pw),
    };
    made.and_then(|h| check_hash(&h))
        .or_else(|_| hash(&pw).and_then(|h| check_hash(&h)))
        .expect("argon2 hashing with default parameters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify_accepts_right_and_rejects_wrong_password() {
        let h = check_hash(&hash(b"correct horse").unwrap()).unwrap();
        assert!(verify(&h, b"correct horse"));
        assert!(!verify(&h, b"correct horsf"));
    }

    #[test]
    fn check_hash_rejects_garbage_and_cheap_params() {
        assert!(check_hash("plaintext").is_err());
        assert!(
            check_hash("$argon2id$v=19$m=16,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo")
                .unwrap_err()
                .contains("memory cost")
        );
        assert!(
            check_hash("$argon2id$v=19$m=19456,t=99,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo")
                .unwrap_err()
                .contains("time cost")
        );
    }

    #[test]
    fn dummy_hash_like_copies_the_most_common_profile() {
        let b = check_hash(&bcrypt::hash("x", 9).unwrap()).unwrap();
        let a = check_hash(&hash(b"y").unwrap()).unwrap();
        let d = dummy_hash_like([&b, &b, &a].into_iter());
        assert_eq!(profile(&d), profile(&b));
        let d = dummy_hash_like([&a].into_iter());
        assert_eq!(profile(&d), profile(&a));
        assert!(!verify(&d, b"y"), "the dummy never matches a real password");
    }

    #[test]
    fn bcrypt_password_over_72_bytes_is_refused_not_truncated() {
        let h = bcrypt::hash("a".repeat(72), 8).unwrap();
        let kind = check_hash(&h).unwrap();
        assert!(verify(&kind, "a".repeat(72).as_bytes()));
        assert!(!verify(&kind, "a".repeat(73).as_bytes()));
    }
}
