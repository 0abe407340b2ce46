//! Live state: sessions, revocations and login-failure counters — everything that must outlive a
//! configuration reload, and (with Redis) a restart and a single instance.
//!
//! Three interfaces, each with an in-memory backend (the default) and a Redis backend:
//! - [`session::SessionStore`] — opaque session ids → user, login time, password version;
//! - [`revocation::RevocationStore`] — revoked token ids and per-user not-before times;
//! - [`limit::LoginLimitStore`] — failed-login counters per username and per address;
//! - [`otp::OtpStore`] — accepted TOTP steps, used recovery codes, wrong-code counters and
//!   pending second steps.
//!
//! Reads on the request path are synchronous: the memory backend answers from its maps, the Redis
//! backend from its in-process L1 cache ([`redis`]). Only a session the L1 does not hold makes a
//! request wait, in [`session::SessionStore::fetch`], which the pipeline calls before deciding.
//! Writes (login, logout, revocation, a failed login) return futures: the Redis backend waits for
//! Redis, so a logout is only reported done once every instance can see it.
//!
//! When the backend cannot vouch for an answer (Redis down, stopped, or its invalidation stream
//! silent for too long) reads return [`StoreUnavailable`], which becomes `503` with `Retry-After`
//! — never an anonymous request, a redirect to the login page or a cleared cookie.

pub mod limit;
pub mod otp;
pub mod redis;
pub mod revocation;
pub mod session;

use std::future::Future;
use std::pin::Pin;

/// A boxed future the stores return for writes (dyn-compatible traits).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store cannot vouch for an answer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("live-state store unavailable")]
pub struct StoreUnavailable;

/// Why a store write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable (or not answering in time).
    #[error("live-state store unavailable")]
    Unavailable,
    /// Something that should not happen (no randomness, an encoding failure).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreUnavailable> for StoreError {
    fn from(_: StoreUnavailable) -> Self {
        StoreError::Unavailable
    }
}

/// A future that is ready at once (the memory backends' writes).
pub fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}
