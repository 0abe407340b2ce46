//! The gateway's own HTTP client for talking to identity providers: one request per connection
//! (discovery, keys, a code exchange, userinfo — a handful per login, never per request), bounded
//! in time and size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Whole request (connect, TLS, answer) bounded by this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers above this are refused (a JWKS or discovery document is a few KiB).
pub const MAX_ANSWER: usize = 512 * 1024;

/// Why a fetch failed (logged; never shown to the browser).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection, a TLS failure, a timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer over [`MAX_ANSWER`].
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

/// An HTTP(S) client for one provider.
pub struct IdpClient {
    tls: tokio_rustls::TlsConnector,
}

impl IdpClient {
    /// A client trusting the public roots, plus `extra_ca` if given.
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<IdpClient, String> {
        let tls = crate::pipeline::upstream::tls_config(extra_ca)?;
        Ok(IdpClient {
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&tls)),
        })
    }

    /// `GET url` with `Accept: application/json` (and a bearer token if given).
    pub async fn get(
        &self,
        url: &url::Url,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.send(
            Method::GET,
            url,
            bearer.map(|t| format!("Bearer {t}")),
            None,
        )
        .await
    }

    /// `POST url` with a form body and an optional `Authorization` value.
    pub async fn post_form(
        &self,
        url: &url::Url,
        authorization: Option<String>,
        form: String,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.send(Method::POST, url, authorization, Some(form))
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &url::Url,
        authorization: Option<String>,
        form: Option<String>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        let fut = self.send_inner(method, url, authorization, form);
        match tokio::time::timeout(FETCH_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Unreachable(format!(
                "{}: no answer within {FETCH_TIMEOUT:?}",
                origin(url)
            ))),
        }
    }

    async fn send_inner(
        &self,
        method: Method,
        url: &url::Url,
        authorization: Option<String>,
        form: Option<String>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        let un = |m: String| FetchError::Unreachable(format!("{}: {m}", origin(url)));
        let host = url.host_str().ok_or_else(|| un("no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| un("no port".into()))?;
        let tcp_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((tcp_host, port))
            .await
            .map_err(|e| un(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("authgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        let body = match form {
            Some(f) => {
                b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let req = b
            .body(Full::new(body))
            .map_err(|e| un(format!("request: {e}")))?;
        let resp = if url.scheme() == "https" {
            let name = rustls_pki_types::ServerName::try_from(tcp_host.to_string())
                .map_err(|e| un(format!("server name: {e}")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| un(format!("TLS: {e}")))?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
        .map_err(un)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    FetchError::TooLarge
                } else {
                    un(format!("reading the answer: {e}"))
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// `scheme://host:port` of a URL, for log lines (never the path or query: a query may carry a
/// code).
pub fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}
