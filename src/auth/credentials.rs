//! The gateway-owned credentials file (`[auth] credentials_file`): each user's TOTP secret,
//! encrypted, and the keyed hashes of their recovery codes.
//!
//! - Secrets are sealed with AES-256-GCM under a key derived (HKDF-SHA256) from
//!   `credentials_key_file` / `credentials_key_env`, with the username as associated data: a
//!   copy of the file without the key yields nothing, and an entry moved to another user does
//!   not open.
//! - Recovery codes are stored only as HMAC-SHA256 under a second derived key; a used code is
//!   marked with the time it was used, never deleted.
//! - The file is written atomically (a temporary file in the same directory, fsync, rename) with
//!   mode 0600, under an exclusive lock on `<file>.lock` so that the CLI and a gateway never
//!   interleave their read-modify-write.
//! - Removing a user's `[[totp]]` entry (`authgate totp remove --user U`) is the recovery path
//!   for a lost device: the user logs in with the password alone again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::{aead, hkdf, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// Digits of a code; the defaults every authenticator app supports (RFC 6238).
pub const DIGITS: u8 = 6;
/// Seconds per step.
pub const STEP: u64 = 30;
/// Steps accepted either side of now (clock drift, a code typed as it changed).
pub const SKEW: u16 = 1;
/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// The smallest credentials key accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// Where the file is and the key that opens it.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// The file.
    pub file: PathBuf,
    /// The key material (its bytes are the HKDF input).
    pub key: Secret,
}

/// The two keys derived from the configured key.
struct Keys {
    seal: aead::LessSafeKey,
    mac: hmac::Key,
}

impl Keys {
    fn derive(secret: &Secret) -> Keys {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"authgate credentials v1");
        let prk = salt.extract(secret.expose().as_bytes());
        let seal = prk
            .expand(&[b"totp secret"], &aead::AES_256_GCM)
            .map(aead::UnboundKey::from)
            .expect("HKDF output of the AEAD key length");
        let mac = prk
            .expand(&[b"recovery code"], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .expect("HKDF output of the HMAC key length");
        Keys {
            seal: aead::LessSafeKey::new(seal),
            mac,
        }
    }

    fn aad(username: &str) -> Vec<u8> {
        let mut a = b"authgate-totp-v1:".to_vec();
        a.extend_from_slice(username.as_bytes());
        a
    }

    fn seal(&self, username: &str, secret: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let mut buf = secret.to_vec();
        self.seal
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(Self::aad(username)),
                &mut buf,
            )
            .map_err(|_| "cannot encrypt".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1:{}", URL_SAFE_NO_PAD.encode(out)))
    }

    fn open(&self, username: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let b64 = sealed
            .strip_prefix("v1:")
            .ok_or("not a sealed secret (expected \"v1:...\")")?;
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| "not base64url".to_string())?;
        if raw.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return Err("too short".into());
        }
        let (nonce, rest) = raw.split_at(aead::NONCE_LEN);
        let mut buf = rest.to_vec();
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let plain = self
            .seal
            .open_in_place(nonce, aead::Aad::from(Self::aad(username)), &mut buf)
            .map_err(|_| {
                "cannot decrypt: wrong credentials key, or the entry belongs to another user"
                    .to_string()
            })?;
        Ok(plain.to_vec())
    }

    fn recovery_hash(&self, username: &str, code: &str) -> String {
        let norm = normalize_recovery(code);
        let mut msg = username.as_bytes().to_vec();
        msg.push(b':');
        msg.extend_from_slice(norm.as_bytes());
        hex(hmac::sign(&self.mac, &msg).as_ref())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Lower case without separators: `ABCDE-12345` and `abcde12345` are one code.
fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Letters and digits that cannot be mistaken for one another (no 0/o, 1/l/i).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz23456789_";

fn new_recovery_code() -> Result<String, String> {
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    // 10 characters of 5 bits (the last alphabet entry is never drawn: 31 symbols, ~49.5 bits).
    let chars: String = b
        .iter()
        .map(|x| RECOVERY_ALPHABET[(*x as usize) % 31] as char)
        .collect();
    Ok(format!("{}-{}", &chars[..5], &chars[5..]))
}

/// The file's schema.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    totp: Vec<RawTotp>,
    #[serde(default)]
    invite: Vec<RawInvite>,
}

/// A single-use enrolment link (`authgate totp invite`): only the SHA-256 of its token is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInvite {
    username: String,
    hash: String,
    /// Unix seconds.
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
    /// Whether the link may replace a second factor the user already has (`--replace`).
    #[serde(default)]
    replace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTotp {
    username: String,
    /// `v1:` + base64url(nonce ‖ AES-256-GCM(secret)).
    secret: String,
    /// Unix seconds.
    enrolled_at: u64,
    #[serde(default)]
    recovery_codes: Vec<RawRecovery>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
}

/// One user's second factor, opened.
pub struct Enrolment {
    totp: totp_rs::Totp,
    /// Unix seconds.
    pub enrolled_at: u64,
    /// Recovery-code hashes not yet used.
    unused: Vec<String>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("enrolled_at", &self.enrolled_at)
            .field("recovery_codes_left", &self.unused.len())
            .finish_non_exhaustive()
    }
}

impl Enrolment {
    /// The step a code matches at `now` (±[`SKEW`]), compared in constant time per step.
    pub fn check(&self, code: &str, now: u64) -> Option<u64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.totp.check(code, now)
    }

    /// How many recovery codes are left.
    pub fn recovery_codes_left(&self) -> usize {
        self.unused.len()
    }
}

fn build_totp(secret: Vec<u8>, username: &str) -> Result<totp_rs::Totp, String> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW)
        .with_step_duration(STEP)
        .with_secret(secret)
        .with_account_name(username.replace(':', "_"))
        .with_issuer(Some("authgate"))
        .build()
        .map_err(|e| format!("TOTP secret: {e:?}"))
}

/// Every user's second factor (the snapshot's view of the file).
pub struct Credentials {
    config: CredentialsConfig,
    keys: Keys,
    by_user: HashMap<String, Enrolment>,
    /// Unused invites by token hash: (username, expiry, may replace).
    invites: HashMap<String, (String, u64, bool)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("file", &self.config.file)
            .field("users", &self.by_user.len())
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<FileFormat, (String, String)> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            (
                "auth.credentials_file".to_string(),
                format!("{}: {}", path.display(), e.message()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileFormat::default()),
        Err(e) => Err((
            "auth.credentials_file".into(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

impl Credentials {
    /// Reads and opens the file (a missing file is an empty one: nobody enrolled yet). Errors
    /// are `(key, message)`, the key naming the entry (`<file>: totp[2].secret`).
    pub fn load(config: &CredentialsConfig) -> Result<Credentials, Vec<(String, String)>> {
        let keys = Keys::derive(&config.key);
        let mut raw = read_file(&config.file).map_err(|e| vec![e])?;
        let mut by_user = HashMap::new();
        let mut errors = Vec::new();
        for (i, t) in std::mem::take(&mut raw.totp).into_iter().enumerate() {
            let key = |k: &str| format!("{}: totp[{i}].{k}", config.file.display());
            let totp = match keys
                .open(&t.username, &t.secret)
                .and_then(|s| build_totp(s, &t.username))
            {
                Ok(x) => x,
                Err(m) => {
                    errors.push((key("secret"), m));
                    continue;
                }
            };
            if by_user.contains_key(&t.username) {
                errors.push((
                    key("username"),
                    format!("{:?} is enrolled twice", t.username),
                ));
                continue;
            }
            let unused = t
                .recovery_codes
                .iter()
                .filter(|r| r.used_at.is_none())
                .map(|r| r.hash.clone())
                .collect();
            by_user.insert(
                t.username,
                Enrolment {
                    totp,
                    enrolled_at: t.enrolled_at,
                    unused,
                },
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let invites = raw
            .invite
            .into_iter()
            .filter(|i| i.used_at.is_none())
            .map(|i| (i.hash, (i.username, i.expires_at, i.replace)))
            .collect();
        Ok(Credentials {
            config: config.clone(),
            keys,
            by_user,
            invites,
        })
    }

    /// `username`'s second factor, if enrolled.
    pub fn get(&self, username: &str) -> Option<&Enrolment> {
        self.by_user.get(username)
    }

    /// Users enrolled.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// Whether nobody is.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// The user an unused, unexpired invite token is for, and the token's hash.
    pub fn invite(&self, token: &str, now: u64) -> Option<(&str, String, bool)> {
        let h = token_hash(token);
        let (user, expires, replace) = self.invites.get(&h)?;
        (now < *expires).then_some((user.as_str(), h, *replace))
    }

    /// Seals a freshly made secret for the confirmation step of an enrolment (a hidden form
    /// field): bound to the user, the invite and the time it was made.
    pub fn seal_enrolment(
        &self,
        username: &str,
        invite: &str,
        secret: &[u8],
        now: u64,
    ) -> Result<String, String> {
        let mut plain = now.to_be_bytes().to_vec();
        plain.extend_from_slice(secret);
        self.keys
            .seal(&format!("enrol:{invite}:{username}"), &plain)
    }

    /// Opens [`Credentials::seal_enrolment`]'s output if it is at most `max_age` seconds old.
    pub fn open_enrolment(
        &self,
        username: &str,
        invite: &str,
        sealed: &str,
        now: u64,
        max_age: u64,
    ) -> Option<(Vec<u8>, u64)> {
        let plain = self
            .keys
            .open(&format!("enrol:{invite}:{username}"), sealed)
            .ok()?;
        let (t, secret) = plain.split_at_checked(8)?;
        let made = u64::from_be_bytes(t.try_into().ok()?);
        (now >= made && now - made <= max_age && secret.len() == SECRET_BYTES)
            .then(|| (secret.to_vec(), made))
    }

    /// The keyed hash of `code` if it is one of `username`'s unused recovery codes.
    pub fn recovery_match(&self, username: &str, code: &str) -> Option<String> {
        let e = self.by_user.get(username)?;
        let h = self.keys.recovery_hash(username, code);
        // Compared as hashes of equal length; the set is ten entries.
        e.unused
            .iter()
            .any(|u| {
                u.len() == h.len()
                    && aws_lc_rs::constant_time::verify_slices_are_equal(u.as_bytes(), h.as_bytes())
                        .is_ok()
            })
            .then_some(h)
    }
}

/// What an enrolment hands the user once: the secret (as an `otpauth://` URI and base32) and
/// the recovery codes in clear. Nothing here is stored in clear.
pub struct NewEnrolment {
    /// `otpauth://totp/authgate:alice?secret=...&issuer=authgate`.
    pub uri: String,
    /// The secret in base32 (for typing it in).
    pub secret_base32: String,
    /// Ten single-use recovery codes.
    pub recovery_codes: Vec<String>,
}

/// Read-modify-write of the file under its lock, written atomically with mode 0600.
fn update(
    config: &CredentialsConfig,
    f: impl FnOnce(&mut FileFormat) -> Result<(), String>,
) -> Result<(), String> {
    let lock_path = config.file.with_extension("lock");
    let lock = open_private(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let mut data = read_file(&config.file).map_err(|(_, m)| m)?;
    f(&mut data)?;
    let text = format!(
        "# Written by authgate: TOTP secrets (AES-256-GCM, key from auth.credentials_key_*) and\n# keyed hashes of recovery codes. Remove a user's [[totp]] entry to reset their second factor.\n\n{}",
        toml::to_string(&data).map_err(|e| format!("cannot encode: {e}"))?
    );
    let dir = config
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| format!("no randomness: {e}"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        config
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        hex(&rnd)
    ));
    {
        // A new file (O_EXCL: never an existing file or a symlink planted there), mode 0600.
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut t = o
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        t.write_all(text.as_bytes())
            .and_then(|()| t.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &config.file)
        .map_err(|e| format!("cannot replace {}: {e}", config.file.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    drop(lock);
    Ok(())
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// SHA-256 hex of an invite token.
fn token_hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// A new random TOTP secret.
pub fn new_secret() -> Result<Vec<u8>, String> {
    let mut secret = vec![0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    Ok(secret)
}

/// The `otpauth://` URI of `secret` for `username`.
pub fn otpauth_uri(secret: &[u8], username: &str) -> Result<String, String> {
    build_totp(secret.to_vec(), username)?
        .to_url()
        .map_err(|e| format!("otpauth URI: {e:?}"))
}

/// The step `code` matches for `secret` at `now` (the confirmation of an enrolment).
pub fn check_code(secret: &[u8], username: &str, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    build_totp(secret.to_vec(), username).ok()?.check(code, now)
}

/// Writes a single-use enrolment invite for `username`, valid for `valid`; returns the token
/// (only its hash is stored). An earlier unused invite of the user is replaced.
pub fn invite(
    config: &CredentialsConfig,
    username: &str,
    valid: std::time::Duration,
    replace: bool,
) -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    let token = URL_SAFE_NO_PAD.encode(b);
    let hash = token_hash(&token);
    let expires_at = crate::store::session::unix_now().saturating_add(valid.as_secs());
    update(config, |data| {
        if !replace && data.totp.iter().any(|t| t.username == username) {
            return Err(format!(
                "{username:?} already has a second factor: --replace makes a link that swaps it (or remove it first)"
            ));
        }
        data.invite
            .retain(|i| !(i.username == username && i.used_at.is_none()));
        data.invite.push(RawInvite {
            username: username.to_string(),
            hash,
            expires_at,
            used_at: None,
            replace,
        });
        Ok(())
    })?;
    Ok(token)
}

/// Enrols `username`: a new secret and ten recovery codes, written to the file. Refuses a user
/// already enrolled unless `replace`.
pub fn enroll(
    config: &CredentialsConfig,
    username: &str,
    replace: bool,
) -> Result<NewEnrolment, String> {
    let secret = new_secret()?;
    enroll_secret(config, username, secret, replace, None)
}

/// Enrols `username` with `secret` (confirmed through invite `used_invite`, which is marked
/// used in the same write).
pub fn enroll_secret(
    config: &CredentialsConfig,
    username: &str,
    secret: Vec<u8>,
    replace: bool,
    used_invite: Option<&str>,
) -> Result<NewEnrolment, String> {
    let keys = Keys::derive(&config.key);
    let totp = build_totp(secret.clone(), username)?;
    let sealed = keys.seal(username, &secret)?;
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| new_recovery_code())
        .collect::<Result<_, _>>()?;
    let entry = RawTotp {
        username: username.to_string(),
        secret: sealed,
        enrolled_at: crate::store::session::unix_now(),
        recovery_codes: codes
            .iter()
            .map(|c| RawRecovery {
                hash: keys.recovery_hash(username, c),
                used_at: None,
            })
            .collect(),
    };
    update(config, |data| {
        if let Some(i) = data.totp.iter().position(|t| t.username == username) {
            if !replace {
                return Err(format!(
                    "{username:?} is already enrolled (remove the entry first, or --replace)"
                ));
            }
            data.totp.remove(i);
        }
        data.totp.push(entry);
        if let Some(h) = used_invite {
            let now = crate::store::session::unix_now();
            let Some(inv) = data
                .invite
                .iter_mut()
                .find(|i| i.hash == h && i.username == username && i.used_at.is_none())
            else {
                return Err("the enrolment link was already used".into());
            };
            inv.used_at = Some(now);
        }
        Ok(())
    })?;
    Ok(NewEnrolment {
        uri: totp.to_url().map_err(|e| format!("otpauth URI: {e:?}"))?,
        secret_base32: totp.secret().to_base32(),
        recovery_codes: codes,
    })
}

/// Removes `username`'s entry; returns whether there was one.
pub fn remove(config: &CredentialsConfig, username: &str) -> Result<bool, String> {
    let mut removed = false;
    update(config, |data| {
        let before = data.totp.len();
        data.totp.retain(|t| t.username != username);
        removed = data.totp.len() != before;
        // An outstanding link would let the factor be set again without the operator.
        data.invite
            .retain(|i| !(i.username == username && i.used_at.is_none()));
        Ok(())
    })?;
    Ok(removed)
}

/// Marks the recovery code with keyed hash `hash` of `username` as used (now).
pub fn mark_recovery_used(
    config: &CredentialsConfig,
    username: &str,
    hash: &str,
) -> Result<(), String> {
    update(config, |data| {
        if let Some(t) = data.totp.iter_mut().find(|t| t.username == username) {
            for r in &mut t.recovery_codes {
                if r.hash == hash && r.used_at.is_none() {
                    r.used_at = Some(crate::store::session::unix_now());
                }
            }
        }
        Ok(())
    })
}

/// The QR code of `uri` as an inline SVG (no external assets).
pub fn qr_svg(uri: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

/// The QR code of `uri` for a terminal (two rows per character).
pub fn qr_terminal(uri: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> CredentialsConfig {
        CredentialsConfig {
            file: dir.join("credentials.toml"),
            key: Secret::new("0123456789abcdef0123456789abcdef-test-key"),
        }
    }

    #[test]
    fn rfc6238_sha1_vectors_hold_with_the_gateway_parameters() {
        // RFC 6238 appendix B, SHA-1, 8 digits: 94287082 at T=59; 6 digits are its last six.
        let t = build_totp(b"12345678901234567890".to_vec(), "x").unwrap();
        assert_eq!(t.generate(59).to_string(), "287082");
        assert_eq!(t.generate(1111111109).to_string(), "081804");
        assert_eq!(t.generate(1234567890).to_string(), "005924");
    }

    #[test]
    fn enrolment_round_trips_sealed_and_codes_verify_by_step() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        let e = enroll(&c, "alice", false).unwrap();
        assert!(e.uri.starts_with("otpauth://totp/"), "{}", e.uri);
        assert_eq!(e.recovery_codes.len(), RECOVERY_CODES);
        let text = std::fs::read_to_string(&c.file).unwrap();
        assert!(
            !text.contains(&e.secret_base32),
            "the secret is stored sealed"
        );
        for code in &e.recovery_codes {
            assert!(
                !text.contains(code.as_str()),
                "recovery codes are stored hashed"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&c.file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let creds = Credentials::load(&c).unwrap();
        let en = creds.get("alice").unwrap();
        let secret = totp_rs::Secret::try_from_base32(&e.secret_base32).unwrap();
        let t = build_totp(secret.as_ref().to_vec(), "alice").unwrap();
        let now = 1_796_236_489;
        let code = t.generate(now).to_string();
        assert_eq!(en.check(&code, now), Some(now / STEP));
        assert_eq!(
            en.check(&code, now + 30),
            Some(now / STEP),
            "one step of skew"
        );
        assert_eq!(en.check(&code, now + 90), None);
        assert_eq!(en.check("12345", now), None);
        assert!(creds
            .recovery_match("alice", &e.recovery_codes[0].to_uppercase())
            .is_some());
        assert!(creds.recovery_match("bob", &e.recovery_codes[0]).is_none());
        assert!(
            enroll(&c, "alice", false).is_err(),
            "no silent re-enrolment"
        );
    }

    #[test]
    fn a_used_recovery_code_is_marked_not_deleted_and_no_longer_matches() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        let e = enroll(&c, "alice", false).unwrap();
        let creds = Credentials::load(&c).unwrap();
        let h = creds.recovery_match("alice", &e.recovery_codes[3]).unwrap();
        mark_recovery_used(&c, "alice", &h).unwrap();
        let text = std::fs::read_to_string(&c.file).unwrap();
        assert_eq!(text.matches("used_at").count(), 1);
        assert_eq!(text.matches("hash = ").count(), RECOVERY_CODES);
        let creds = Credentials::load(&c).unwrap();
        assert!(creds
            .recovery_match("alice", &e.recovery_codes[3])
            .is_none());
        assert!(creds
            .recovery_match("alice", &e.recovery_codes[4])
            .is_some());
        assert_eq!(creds.get("alice").unwrap().recovery_codes_left(), 9);
    }

    #[test]
    fn a_wrong_key_or_an_entry_moved_to_another_user_does_not_open() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        enroll(&c, "alice", false).unwrap();
        let wrong = CredentialsConfig {
            key: Secret::new("another-key-another-key-another-key!!"),
            ..c.clone()
        };
        let errs = Credentials::load(&wrong).unwrap_err();
        assert!(errs[0].0.ends_with("totp[0].secret"), "{errs:?}");
        let text = std::fs::read_to_string(&c.file).unwrap();
        std::fs::write(
            &c.file,
            text.replace("username = \"alice\"", "username = \"bob\""),
        )
        .unwrap();
        assert!(Credentials::load(&c).is_err());
        assert!(remove(&c, "bob").unwrap());
        assert!(Credentials::load(&c).unwrap().is_empty());
    }
}
