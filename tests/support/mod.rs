//! Test builders: a recording upstream, a gateway on ephemeral ports, login helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body_sha: String,
    /// First 64 KiB of the body.
    pub body_head: Bytes,
}

impl Seen {
    /// All values of a header, as strings.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    /// The single value of a header.
    pub fn one(&self, name: &str) -> Option<String> {
        let a = self.all(name);
        assert!(
            a.len() <= 1,
            "header {name} appears {} times: {a:?}",
            a.len()
        );
        a.into_iter().next()
    }
}

/// A real HTTP/1.1 upstream on 127.0.0.1:0 that records every request.
///
/// Paths: `/slow?ms=N` answers after N ms; `/download?bytes=N` streams N bytes (64 KiB chunks);
/// `/drip?chunks=N&ms=M` answers at once and then sends N small chunks, M ms apart;
/// `/ws` is a WebSocket echo; `/status?code=N` answers with that status; anything else echoes
/// the request body back with headers `x-seen-method`, `x-seen-uri`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::serve(None).await
    }

    /// Accepts connections (through TLS when `tls` is given) and serves them with the recording
    /// handler; upgrades (WebSocket) work on both.
    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    return;
                };
                let (seen, tls) = (s2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handler(req, seen.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => {
                                http.serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same upstream behind TLS, with a fresh self-signed certificate for `localhost` and
    /// 127.0.0.1 written to `dir/upstream-ca.pem` (what a route's `tls_ca` points at).
    pub async fn start_tls(dir: &std::path::Path) -> (Upstream, std::path::PathBuf) {
        use rustls_pki_types::pem::PemObject;
        init();
        let cert = dir.join("upstream-ca.pem");
        let key = dir.join("upstream-key.pem");
        authgate::server::tls::generate_dev_cert(
            &cert,
            &key,
            &["localhost".to_string(), "127.0.0.1".to_string()],
        )
        .unwrap();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        (Self::serve(Some(acceptor)).await, cert)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request seen.
    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

async fn upstream_handler(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<UpBody>, Infallible> {
    use sha2_lite::Sha256Hex;
    let q = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| -> Option<u64> {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
    };
    let path = req.uri().path().to_string();

    if path == "/ws" {
        let headers = req.headers().clone();
        let mut rec = Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: headers.clone(),
            body_len: 0,
            body_sha: String::new(),
            body_head: Bytes::new(),
        };
        rec.headers = headers.clone();
        seen.lock().unwrap().push(rec);
        let key = headers
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                use futures_util::{SinkExt, StreamExt};
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(m)) = rx.next().await {
                    if m.is_text() || m.is_binary() {
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    } else if m.is_close() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }

    // Stream the body in, hashing as we go, so large uploads use no memory here either.
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256Hex::new();
    let mut len = 0usize;
    let mut head = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            hasher.update(&data);
            if head.len() < 65536 {
                let take = (65536 - head.len()).min(data.len());
                head.extend_from_slice(&data[..take]);
            }
        }
    }
    let rec = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: len,
        body_sha: hasher.finish(),
        body_head: Bytes::from(head.clone()),
    };
    seen.lock().unwrap().push(rec.clone());

    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(1000))).await;
        return Ok(Response::builder()
            .header("x-upstream", "slow")
            .body(full("slow done"))
            .unwrap());
    }
    if path == "/download" {
        let total = param("bytes").unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 65536]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                    left - n,
                ))
            }
        });
        return Ok(Response::builder()
            .header("x-upstream", "download")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap());
    }
    if path == "/drip" {
        let chunks = param("chunks").unwrap_or(1);
        let gap = Duration::from_millis(param("ms").unwrap_or(100));
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("drip {i}\n")))),
                i + 1,
            ))
        });
        return Ok(Response::builder()
            .header("x-upstream", "drip")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap());
    }
    if path == "/status" {
        let code = param("code").unwrap_or(200) as u16;
        return Ok(Response::builder()
            .status(code)
            .body(full("status"))
            .unwrap());
    }
    let resp = Response::builder()
        .header("x-seen-method", rec.method.clone())
        .header("x-seen-uri", rec.uri.clone())
        .header("x-body-sha", rec.body_sha.clone())
        .header("x-body-len", rec.body_len.to_string())
        .header("connection", "x-upstream-secret")
        .header("x-upstream-secret", "must-not-reach-client")
        .header("keep-alive", "timeout=5")
        .body(full(head))
        .unwrap();
    Ok(resp)
}

pub mod hostile_idp;
pub mod oidc;
pub mod redis;

/// Minimal SHA-256 hex digest via aws-lc-rs (already a dependency of the crate).
pub mod sha2_lite {
    pub struct Sha256Hex(aws_lc_rs::digest::Context);
    impl Sha256Hex {
        pub fn new() -> Self {
            Sha256Hex(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
        }
        pub fn update(&mut self, d: &[u8]) {
            self.0.update(d)
        }
        pub fn finish(self) -> String {
            self.0
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
    }
    impl Default for Sha256Hex {
        fn default() -> Self {
            Self::new()
        }
    }
}

/// Password used for every test user.
pub const PASSWORD: &str = "correct horse battery staple";

/// An argon2id hash of [`PASSWORD`] at the cheapest cost the gateway accepts (tests stay fast).
pub fn password_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(8192, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"authgate-test-salt").unwrap();
        a.hash_password(PASSWORD.as_bytes(), &salt)
            .unwrap()
            .to_string()
    })
}

/// A `[[users]]` block for `name` with `groups`.
pub fn user_toml(name: &str, groups: &[&str]) -> String {
    let g: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
    format!("[[users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\nemail = \"{name}@example.com\"\nname = \"{name} Example\"\ngroups = [{}]\n\n", password_hash(), g.join(", "))
}

/// A running gateway with its temporary directory.
pub struct TestGateway {
    pub gw: Option<authgate::Gateway>,
    pub addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestGateway {
    /// Starts a gateway from TOML text. `{dir}` in the text is replaced by the temp dir path.
    /// A `[server]` section with `listen = "127.0.0.1:0"` is added unless the text has one.
    pub async fn start(toml: &str) -> TestGateway {
        TestGateway::start_with_workers(toml, Vec::new()).await
    }

    /// Like [`TestGateway::start`], dealing connections out to `workers` runtimes too.
    pub async fn start_with_workers(
        toml: &str,
        workers: Vec<tokio::runtime::Handle>,
    ) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let text = toml.replace("{dir}", dir.path().to_str().unwrap());
        let text = if text.contains("[server]") {
            text
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{text}")
        };
        // In-process gateways share the test binary's stderr: no access log unless the test asks
        // (tests/telemetry.rs reads the real binary's).
        let text = if text.contains("[log]") {
            text
        } else {
            format!("{text}\n[log]\naccess_log = false\n")
        };
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = authgate::Config::load(&path)
            .unwrap_or_else(|e| panic!("config invalid: {e}\n---\n{text}"));
        let gw = authgate::Gateway::start_with_workers(cfg, workers)
            .await
            .unwrap();
        let addr = gw.http_addr().or(gw.https_addr()).unwrap();
        let https_addr = gw.https_addr();
        TestGateway {
            gw: Some(gw),
            addr,
            https_addr,
            dir,
            config_path: path,
        }
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn gateway(&self) -> &authgate::Gateway {
        self.gw.as_ref().unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

/// A client that neither follows redirects nor keeps cookies (tests handle both by hand).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// The gateway's metrics exposition, scraped over HTTP (the gateway needs a `[metrics]` listener).
pub async fn scrape_metrics(gw: &TestGateway) -> String {
    let addr = gw.gateway().metrics_addr().expect("no [metrics] listener");
    scrape_metrics_at(addr).await.1
}

/// The content type and the text of the metrics exposition at `addr`.
pub async fn scrape_metrics_at(addr: SocketAddr) -> (String, String) {
    let r = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    (ctype, r.text().await.unwrap())
}

/// The sum of the samples of `name` whose labels include every `label="value"` of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Logs in through the JSON endpoint and returns the `name=value` cookie pair.
pub async fn login_json(gw: &TestGateway, user: &str, password: &str) -> String {
    let r = client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login of {user} failed");
    set_cookie_pair(&r).expect("login set no cookie")
}

/// The `name=value` pair of the (non-clearing) Set-Cookie named `name`, if the response has one.
pub fn cookie_named(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")) && !v.contains("Max-Age=0"))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// The `name=value` part of the first non-clearing Set-Cookie of a response.
pub fn set_cookie_pair(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.contains("Max-Age=0"))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// A raw HTTP/1.1 exchange over a fresh TCP connection: returns the whole response text.
/// For requests reqwest refuses to send (odd paths, duplicate headers).
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Status code of a raw response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Makes sure aws-lc-rs is the process crypto provider (reqwest builds its own config otherwise).
pub fn init() {
    authgate::server::tls::install_crypto_provider();
}

/// Executor type used by tests that drive hyper clients directly.
pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

/// The real binary, killed when dropped while still running (a test that fails before its
/// SIGTERM must not leave a gateway behind).
pub struct Binary(Option<std::process::Child>);

impl std::ops::Deref for Binary {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("child taken")
    }
}

impl std::ops::DerefMut for Binary {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child taken")
    }
}

impl Binary {
    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("child taken")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts the real binary on an ephemeral port; returns the child and the address it logged.
pub fn spawn_binary(
    config: &std::path::Path,
) -> (
    Binary,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("AUTHGATE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let child = Binary(Some(child));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0,
            "binary exited before listening"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening (http)" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    (child, addr, err)
}

/// Sends `sig` (e.g. "HUP") to the child.
pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM, then waits (at most 30 s) for the child to exit, draining its stderr so it never
/// blocks on a full pipe.
pub async fn terminate_and_wait(
    child: Binary,
    stderr: std::io::BufReader<std::process::ChildStderr>,
) -> std::process::ExitStatus {
    terminate_and_read(child, stderr).await.0
}

/// [`terminate_and_wait`], returning also the rest of its stderr: everything it logged, flushed
/// on the way out (a killed gateway loses what its log writer had not written yet).
pub async fn terminate_and_read(
    child: Binary,
    mut stderr: std::io::BufReader<std::process::ChildStderr>,
) -> (std::process::ExitStatus, String) {
    signal(&child, "TERM");
    let pid = child.id().to_string();
    let mut child = child.into_inner();
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        (child.wait().unwrap(), rest)
    });
    match tokio::time::timeout(Duration::from_secs(30), status).await {
        Ok(s) => s.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            panic!("the binary did not exit within 30 s of SIGTERM (killed)")
        }
    }
}

/// `[auth]` JWT mode (HS256) with a fresh secret written into `dir`.
pub fn jwt_section(dir: &std::path::Path) -> String {
    let files =
        authgate::auth::jwt::generate_key(authgate::config::JwtAlgorithm::HS256, &dir.join("hs"))
            .unwrap();
    format!(
        "[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nalgorithm = \"HS256\"\nsigning_key = {:?}\n",
        files[0].to_str().unwrap()
    )
}

/// `POST /.auth/logout` (`?all=1`: everywhere) as an API client with `cookie`; asserts that it
/// logged someone out.
pub async fn logout(gw: &TestGateway, cookie: &str, all: bool) {
    let r = client()
        .post(gw.url(if all {
            "/.auth/logout?all=1"
        } else {
            "/.auth/logout"
        }))
        .header("cookie", cookie)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["was_logged_in"], true, "{v}");
}

/// A route section: everything under `/` to `upstream`, public.
pub fn public_route(upstream: &str) -> String {
    format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"{upstream}\"\naccess = \"public\"\n")
}

/// A gateway with an HTTPS listener (ALPN h2 + http/1.1) and a public route to `upstream`;
/// returns it with the path of its certificate (self-signed for localhost and 127.0.0.1).
pub async fn tls_gateway(
    upstream: &str,
    dir: &std::path::Path,
) -> (TestGateway, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    authgate::server::tls::generate_dev_cert(
        &cert,
        &key,
        &["localhost".to_string(), "127.0.0.1".to_string()],
    )
    .unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://gateway.test\"\n\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n{}",
        cert.display(),
        key.display(),
        public_route(upstream)
    );
    (TestGateway::start(&toml).await, cert)
}
