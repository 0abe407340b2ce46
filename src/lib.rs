//! authgate: a reverse-proxy authentication gateway. It serves the login itself, authenticates
//! every forwarded request by a session cookie or a signed JWT cookie, and passes the user's
//! identity to the upstream app in request headers.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod builtin;
pub mod config;
pub mod error;
pub mod login;
pub mod pipeline;
pub mod policy;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use server::Gateway;

/// Shared stylesheet of the gateway's own pages (inline: pages load no external assets).
pub const PAGE_CSS: &str = "*{box-sizing:border-box}body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:#f3f4f6;color:#111827;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}.card{background:#fff;padding:2rem 2.25rem;border-radius:12px;box-shadow:0 10px 30px rgba(0,0,0,.08);width:100%;max-width:24rem}.card.wide{max-width:60rem}h1{font-size:1.4rem;margin:0 0 1rem}label{display:block;font-weight:600;margin:.75rem 0 .25rem}input{width:100%;padding:.6rem .7rem;border:1px solid #9ca3af;border-radius:8px;font:inherit}input:focus,button:focus{outline:3px solid #2563eb;outline-offset:1px}button{margin-top:1.25rem;width:100%;padding:.65rem;border:0;border-radius:8px;background:#1d4ed8;color:#fff;font:inherit;font-weight:600;cursor:pointer}button.secondary{background:#4b5563}a.sso{display:block;margin-top:.75rem;padding:.65rem;border-radius:8px;background:#1d4ed8;color:#fff;font-weight:600;text-align:center;text-decoration:none}a.sso:focus{outline:3px solid #2563eb;outline-offset:1px}.or{text-align:center;color:#6b7280;margin:1.25rem 0 0}.error{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;padding:.6rem .75rem;border-radius:8px}.hint{background:#fffbeb;border:1px solid #fde68a;padding:.6rem .75rem;border-radius:8px;font-size:.9rem}table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.9rem}caption{text-align:left;font-weight:600;margin-bottom:.25rem}th,td{border-top:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left;vertical-align:top;word-break:break-all}th{white-space:nowrap;color:#374151}dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}dd{margin:0}code{background:#f3f4f6;padding:0 .25rem;border-radius:4px}@media (prefers-color-scheme:dark){body{background:#111827;color:#f9fafb}.card{background:#1f2937}input{background:#111827;color:#f9fafb}th{color:#d1d5db}}";
