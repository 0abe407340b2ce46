//! Built-in upstreams.

pub mod whoami;
