mod support;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A `[server]` section on an ephemeral port with extra keys.
fn server_section(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n{extra}\n")
}

/// A raw response split into status, lowercase header (name, value) pairs and body text.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn parse(text: &str) -> RawResponse {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        RawResponse {
            status: raw_status(text),
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with the given Host and Accept over a fresh connection (`Connection: close`).
async fn get_with_host(addr: SocketAddr, host: &str, path: &str, accept: &str) -> RawResponse {
    let text = raw_request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    RawResponse::parse(&text)
}

/// Reads one HTTP/1.1 response with a Content-Length body from a kept-alive connection.
async fn read_one_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Polls `cond` every few ms until it holds, failing after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deterministic test data: chunk `i` of a streamed body.
fn chunk(i: usize, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn sha_hex(chunks: &[Bytes]) -> String {
    let mut h = sha2_lite::Sha256Hex::new();
    for c in chunks {
        h.update(c);
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// 1. methods, queries, bodies, streaming

#[tokio::test]
async fn proxy_every_method_query_and_body_arrive_exactly() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let c = client();
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let path = format!("/m/{m}/x.y?a=1&b=%2F%20&c=&d=%C3%A9&a=2");
        let body = if m == "HEAD" {
            String::new()
        } else {
            format!("body of {m} \u{e9}\0 end")
        };
        let r = c
            .request(method, gw.url(&path))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
        assert_eq!(r.headers()["x-seen-method"], m);
        let text = r.text().await.unwrap();
        let s = up.last();
        assert_eq!(s.method, m);
        assert_eq!(
            s.uri, path,
            "{m}: path and query must reach the upstream unchanged"
        );
        assert_eq!(s.body_head, Bytes::from(body.clone()), "{m}");
        if m != "HEAD" {
            assert_eq!(text, body, "{m}: response body streamed back");
        } else {
            assert!(text.is_empty());
        }
    }
    assert_eq!(up.count(), 7);
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_chunked_request_body_arrives_whole() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let chunks: Vec<Bytes> = (0..40).map(|i| chunk(i, 1 + i * 997)).collect();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let sha = sha_hex(&chunks);
    let stream =
        futures_util::stream::iter(chunks.clone().into_iter().map(Ok::<_, std::io::Error>));
    let r = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-body-len"], total.to_string().as_str());
    assert_eq!(r.headers()["x-body-sha"], sha.as_str());
    let s = up.last();
    assert_eq!((s.body_len, s.body_sha.as_str()), (total, sha.as_str()));
    assert!(
        s.headers.get("content-length").is_none()
            || s.one("content-length").unwrap() == total.to_string()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_large_streamed_bodies_both_ways_keep_their_length_and_content() {
    init();
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024; // 64 MiB
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    // Upload: generated lazily so neither side holds the whole body.
    let mut h = sha2_lite::Sha256Hex::new();
    for i in 0..CHUNKS {
        h.update(&chunk(i % 16, CHUNK));
    }
    let sha = h.finish();
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|i| Ok::<_, std::io::Error>(chunk(i % 16, CHUNK))),
    );
    let r = client()
        .post(gw.url("/big-upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-body-len"],
        (CHUNK * CHUNKS).to_string().as_str()
    );
    assert_eq!(r.headers()["x-body-sha"], sha.as_str());
    assert_eq!(up.last().body_len, CHUNK * CHUNKS);

    // Download.
    let mut r = client()
        .get(gw.url("/download?bytes=67108864"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "download");
    let mut n = 0usize;
    let mut all_x = true;
    while let Some(c) = r.chunk().await.unwrap() {
        n += c.len();
        all_x &= c.first() == Some(&b'x') && c.last() == Some(&b'x');
    }
    assert_eq!(n, 67_108_864);
    assert!(all_x, "downloaded bytes changed on the way");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. hop-by-hop headers

#[tokio::test]
async fn proxy_hop_by_hop_headers_are_removed_in_both_directions() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let req = "GET /hop HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Foo\r\nX-Foo: named-in-connection\r\nKeep-Alive: timeout=99\r\nTE: trailers\r\nProxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n";
    let resp = RawResponse::parse(&raw_request(gw.addr, req).await);
    assert_eq!(resp.status, 200);
    let s = up.last();
    for h in [
        "x-foo",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            s.headers.get(h).is_none(),
            "upstream saw hop-by-hop header {h}: {:?}",
            s.headers
        );
    }
    for v in s.all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-foo") && !v.contains("close"),
            "client's Connection reached upstream: {v}"
        );
    }
    assert_eq!(
        s.one("x-kept").as_deref(),
        Some("yes"),
        "end-to-end header lost"
    );

    // The upstream answers with `Connection: x-upstream-secret`, `X-Upstream-Secret`, `Keep-Alive`.
    assert_eq!(resp.header("x-seen-method"), Some("GET"));
    assert!(
        resp.header("x-upstream-secret").is_none(),
        "{:?}",
        resp.headers
    );
    assert!(resp.header("keep-alive").is_none(), "{:?}", resp.headers);
    for (n, v) in &resp.headers {
        assert!(
            !v.to_ascii_lowercase().contains("x-upstream-secret"),
            "upstream's Connection value leaked in {n}: {v}"
        );
        assert!(
            !v.contains("must-not-reach-client"),
            "secret value leaked in {n}"
        );
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. X-Forwarded-*

fn is_forwarding_spelling(name: &str, canonical: &str) -> bool {
    name.replace(['_', '.'], "-")
        .eq_ignore_ascii_case(canonical)
}

#[tokio::test]
async fn proxy_x_forwarded_headers_from_untrusted_client_are_replaced_in_every_spelling() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let req = "GET /xff HTTP/1.1\r\nHost: app.test:8443\r\nX-Forwarded-For: 6.6.6.6\r\nX_Forwarded_For: 7.7.7.7\r\nx.forwarded.for: 8.8.8.8\r\nX-Forwarded-Proto: https\r\nX_Forwarded_Proto: https\r\nX-Forwarded-Host: evil.test\r\nX_Forwarded_Host: evil.test\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nConnection: close\r\n\r\n";
    let resp = RawResponse::parse(&raw_request(gw.addr, req).await);
    assert_eq!(resp.status, 200);
    let s = up.last();
    assert_eq!(s.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(s.one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(s.one("x-forwarded-host").as_deref(), Some("app.test:8443"));
    assert!(
        s.headers.get("x-real-ip").is_none() && s.headers.get("forwarded").is_none(),
        "{:?}",
        s.headers
    );
    for name in s.headers.keys() {
        let n = name.as_str();
        for canonical in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(
                !is_forwarding_spelling(n, canonical) || n == canonical,
                "spoofed spelling {n} reached the upstream"
            );
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_x_forwarded_for_from_trusted_proxy_is_appended_to() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        server_section("trusted_proxies = [\"127.0.0.1/32\"]"),
        public_route(&up.url())
    ))
    .await;
    let r = client()
        .get(gw.url("/xff"))
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = up.last();
    assert_eq!(
        s.one("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(s.one("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        s.one("x-forwarded-host").as_deref(),
        Some("public.example.com")
    );

    // Several X-Forwarded-For lines are one comma-separated list (RFC 9110 §5.3): none may be lost.
    let req = "GET /xff-lines HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&raw_request(gw.addr, req).await), 200);
    assert_eq!(
        up.last().one("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1")
    );

    // Without a client value the trusted path still sets them from the connection.
    client().get(gw.url("/xff2")).send().await.unwrap();
    let s = up.last();
    assert_eq!(s.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(s.one("x-forwarded-proto").as_deref(), Some("http"));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. upstream Host

#[tokio::test]
async fn proxy_upstream_host_is_the_upstreams_unless_preserve_host() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\npath_prefix = \"/keep\"\nupstream = \"{}\"\naccess = \"public\"\npreserve_host = true\n",
        public_route(&up.url()),
        up.url()
    ))
    .await;
    let r = get_with_host(gw.addr, "app.example.com:8443", "/plain", "*/*").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().one("host").unwrap(), up.addr.to_string());

    let r = get_with_host(gw.addr, "app.example.com:8443", "/keep/x", "*/*").await;
    assert_eq!(r.status, 200);
    let s = up.last();
    assert_eq!(s.uri, "/keep/x");
    assert_eq!(s.one("host").as_deref(), Some("app.example.com:8443"));

    // An HTTP/1.0 client without Host: the upstream still gets one (its own).
    let r = raw_request(gw.addr, "GET /keep/y HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let s = up.last();
    assert_eq!(s.uri, "/keep/y");
    assert_eq!(s.one("host").unwrap(), up.addr.to_string());
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. routing

#[tokio::test]
async fn route_longest_prefix_wins_on_segment_boundaries_and_base_path_is_prepended() {
    init();
    let up = Upstream::start().await;
    let u = up.url();
    // Each route has its own base path on the same upstream, so the forwarded URI tells the route.
    let gw = TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}/root\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app/admin\"\nupstream = \"{u}/admin/\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app/\"\nupstream = \"{u}/a\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/base-only\"\nupstream = \"{u}/base\"\naccess = \"public\"\n"
    ))
    .await;
    let cases = [
        ("/app", "/a/app"),
        ("/app/", "/a/app/"),
        ("/app/x?q=1", "/a/app/x?q=1"),
        ("/apple", "/root/apple"),
        ("/app-x/y", "/root/app-x/y"),
        ("/app/admin", "/admin/app/admin"),
        ("/app/admin/users/1", "/admin/app/admin/users/1"),
        ("/app/administrator", "/a/app/administrator"),
        ("/base-only/x", "/base/base-only/x"),
        ("/", "/root/"),
    ];
    let c = client();
    for (path, want) in cases {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(up.last().uri, want, "request {path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn route_base_path_is_prepended_to_the_forwarded_path() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&format!("{}/base", up.url()))).await;
    let r = client().get(gw.url("/x?y=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/base/x?y=1");
    gw.shutdown().await;
}

#[tokio::test]
async fn route_host_matching_exact_wildcard_port_ignored_and_unknown_host_is_404() {
    init();
    let up = Upstream::start().await;
    let u = up.url();
    let gw = TestGateway::start(&format!(
        "[[routes]]\nhost = \"a.example.com\"\npath_prefix = \"/\"\nupstream = \"{u}/exact\"\naccess = \"public\"\n\n\
         [[routes]]\nhost = \"*.example.com\"\npath_prefix = \"/\"\nupstream = \"{u}/wild\"\naccess = \"public\"\n"
    ))
    .await;
    for (host, want) in [
        ("a.example.com", "/exact/p"),
        ("a.example.com:9999", "/exact/p"),
        ("A.Example.COM", "/exact/p"),
        ("b.example.com", "/wild/p"),
        ("x.y.example.com:81", "/wild/p"),
    ] {
        let r = get_with_host(gw.addr, host, "/p", "*/*").await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(up.last().uri, want, "{host}");
    }
    let before = up.count();
    for host in [
        "example.com",
        "other.org",
        "a.example.com.evil.org",
        "evilexample.com",
    ] {
        let r = get_with_host(gw.addr, host, "/p", "application/json").await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{host}");
        assert!(r.body.contains("\"status\":404"), "{host}: {}", r.body);
    }
    assert_eq!(
        up.count(),
        before,
        "unmatched hosts must not reach any upstream"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn route_no_match_answers_404_json_for_api_and_html_for_browsers() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/only\"\nupstream = \"{}\"\naccess = \"public\"\n",
        up.url()
    ))
    .await;
    let r = client()
        .get(gw.url("/other"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["status"], 404);

    let r = client()
        .get(gw.url("/onlyx"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let t = r.text().await.unwrap();
    assert!(t.contains("<html") && t.contains("404"), "{t}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. upstream failures

#[tokio::test]
async fn upstream_dead_answers_502_without_internal_details() {
    init();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = TestGateway::start(&public_route(&format!("http://127.0.0.1:{port}"))).await;
    let leaks = |body: &str| {
        let l = body.to_ascii_lowercase();
        assert!(
            !l.contains("refused") && !l.contains("connect") && !l.contains("tcp"),
            "internal detail in body: {body}"
        );
        assert!(
            !body.contains(&format!(":{port}")) && !body.contains("127.0.0.1"),
            "upstream address in body: {body}"
        );
    };
    let r = client()
        .get(gw.url("/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body = r.text().await.unwrap();
    leaks(&body);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"], 502);

    let r = client()
        .post(gw.url("/x"))
        .header("accept", "text/html")
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(body.contains("<html"));
    leaks(&body);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_slower_than_route_timeout_answers_504() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\naccess = \"public\"\ntimeout = \"200ms\"\n", up.url())).await;
    let start = Instant::now();
    let r = client().get(gw.url("/slow?ms=3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "timeout not applied: {:?}",
        start.elapsed()
    );
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["status"], 504);
    // A fast answer on the same route still works.
    let r = client().get(gw.url("/slow?ms=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn request_id_reaches_the_upstream_and_the_client_alike_and_is_not_the_clients() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = c
            .get(gw.url("/rid"))
            .header("x-request-id", "client-chosen")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let forwarded = up
            .last()
            .one("x-request-id")
            .expect("x-request-id upstream");
        assert_eq!(answered, forwarded, "client and upstream see different ids");
        assert!(
            answered.len() == 16 && answered.bytes().all(|b| b.is_ascii_hexdigit()),
            "{answered}"
        );
        ids.push(answered);
    }
    assert_ne!(ids[0], ids[1], "ids repeat");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_deadlines_follow_each_route_on_one_kept_alive_connection() {
    // One client connection keeps one upstream deadline timer across its requests: a route with
    // a short timeout after one with a long timeout must still answer 504 on time, and requests
    // that each finish in time must not time out when the connection's earlier deadlines pass.
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[[routes]]\nhost = \"long.test\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\ntimeout = \"60s\"\n\n\
         [[routes]]\nhost = \"short.test\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\ntimeout = \"300ms\"\n",
        u = up.url()
    ))
    .await;
    let mut s = TcpStream::connect(gw.gateway().http_addr().unwrap())
        .await
        .unwrap();
    let mut get = async |host: &str, ms: u64| {
        let req = format!("GET /slow?ms={ms} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let start = Instant::now();
        let status = raw_status(&read_one_response(&mut s).await);
        (status, start.elapsed())
    };
    assert_eq!(get("long.test", 50).await.0, 200);
    let (status, took) = get("short.test", 5000).await;
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(3000), "timeout late: {took:?}");
    // Three answers of 200 ms each on the 300 ms route: the deadline armed for the first
    // passes during the second.
    for _ in 0..3 {
        assert_eq!(get("short.test", 200).await.0, 200);
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. TLS, HTTP/2

/// [`support::tls_gateway`] with its certificate ready for reqwest.
async fn tls_gateway_trusted(
    up: &Upstream,
    dir: &std::path::Path,
) -> (TestGateway, reqwest::Certificate) {
    let (gw, cert) = tls_gateway(&up.url(), dir).await;
    let pem = std::fs::read(&cert).unwrap();
    (gw, reqwest::Certificate::from_pem(&pem).unwrap())
}

#[tokio::test]
async fn tls_http2_client_reaches_http11_upstream() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, ca) = tls_gateway_trusted(&up, dir.path()).await;
    let https = gw.https_addr.expect("https listener");
    let c = reqwest::Client::builder()
        .add_root_certificate(ca)
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .post(format!("https://127.0.0.1:{}/h2/path?x=1", https.port()))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN should pick h2");
    assert_eq!(r.text().await.unwrap(), "over h2");
    let s = up.last();
    assert_eq!(s.version, http::Version::HTTP_11);
    assert_eq!(s.uri, "/h2/path?x=1");
    assert_eq!(s.method, "POST");
    assert_eq!(s.body_head, Bytes::from_static(b"over h2"));
    assert_eq!(s.one("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(s.one("host").unwrap(), up.addr.to_string());
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_http11_client_is_served() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, ca) = tls_gateway_trusted(&up, dir.path()).await;
    let https = gw.https_addr.expect("https listener");
    let c = reqwest::Client::builder()
        .add_root_certificate(ca)
        .http1_only()
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .get(format!("https://127.0.0.1:{}/h1", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(up.last().version, http::Version::HTTP_11);
    assert_eq!(up.last().one("x-forwarded-proto").as_deref(), Some("https"));
    // Plain HTTP on the other listener still works and says so.
    let r = client()
        .get(format!(
            "http://{}/plain",
            gw.gateway().http_addr().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().one("x-forwarded-proto").as_deref(), Some("http"));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 8. WebSocket

async fn ws_connect(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_echo(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, m: Message) {
    ws.send(m.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo timed out")
        .expect("stream ended")
        .unwrap();
    assert_eq!(got, m);
}

#[tokio::test]
async fn websocket_text_and_binary_echo_through_the_gateway() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let mut ws = ws_connect(gw.addr).await;
    ws_echo(&mut ws, Message::Text("hello through the gateway".into())).await;
    ws_echo(
        &mut ws,
        Message::Binary(Bytes::from((0..=255u8).collect::<Vec<_>>())),
    )
    .await;
    ws_echo(&mut ws, Message::Text("x".repeat(100_000).into())).await;
    let s = up.last();
    assert_eq!(s.uri, "/ws");
    assert_eq!(
        s.one("upgrade")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert!(s.one("sec-websocket-key").is_some());
    ws.close(None).await.unwrap();
    drop(ws);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9. graceful shutdown

#[tokio::test]
async fn shutdown_lets_in_flight_request_finish_then_refuses_connections() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let addr = gw.addr;
    let slow = tokio::spawn(client().get(gw.url("/slow?ms=1500")).send());
    wait_until(
        "the upstream has the slow request",
        Duration::from_secs(5),
        || up.count() == 1,
    )
    .await;
    let shutdown = tokio::spawn(gw.shutdown());

    // The listener closes right away while the request is still in flight.
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "listener still accepting after shutdown began"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !slow.is_finished(),
        "the slow request ended before its time"
    );

    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("slow request hung")
        .unwrap()
        .expect("in-flight request was cut off");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slow done");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "connections accepted after shutdown"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn shutdown_waits_for_open_websocket_until_the_client_closes_it() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let addr = gw.addr;
    let mut ws = ws_connect(addr).await;
    ws_echo(&mut ws, Message::Text("before".into())).await;
    let shutdown = tokio::spawn(gw.shutdown());

    let start = Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "listener still accepting after shutdown began"
        );
        tokio::task::yield_now().await;
    }
    // Grace period: the tunnel keeps working and the shutdown waits for it.
    ws_echo(&mut ws, Message::Text("during grace".into())).await;
    ws_echo(
        &mut ws,
        Message::Binary(Bytes::from_static(b"\x00\x01\x02")),
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown finished with a tunnel still open"
    );

    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown did not finish after the tunnel closed")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 10. malformed requests

#[tokio::test]
async fn malformed_request_line_bad_escapes_and_encoded_slash_answer_400() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let garbage = raw_request(gw.addr, "THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(raw_status(&garbage), 400, "{garbage}");
    for path in ["/%zz", "/a%2fb", "/a%2Fb", "/a%5cb", "/a%00b", "/a%"] {
        let r = raw_request(
            gw.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(raw_status(&r), 400, "{path}: {r}");
    }
    assert_eq!(up.count(), 0, "malformed requests reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_oversized_head_answers_431_and_too_many_headers_4xx() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        server_section("max_header_bytes = 8192"),
        public_route(&up.url())
    ))
    .await;
    let big = raw_request(
        gw.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(9000)
        ),
    )
    .await;
    assert_eq!(raw_status(&big), 431, "{big}");

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw_request(
        gw.addr,
        &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    let st = raw_status(&r);
    assert!((400..500).contains(&st), "too many headers gave {st}: {r}");

    // Under the cap is fine.
    let ok = raw_request(
        gw.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(4000)
        ),
    )
    .await;
    assert_eq!(raw_status(&ok), 200);
    assert_eq!(
        up.count(),
        1,
        "only the well-formed request may reach the upstream"
    );
    gw.shutdown().await;
}

/// A gateway with `header_read_timeout = "1s"` and one public route to `up`.
async fn one_second_idle_bound(up: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        "{}{}",
        server_section("header_read_timeout = \"1s\""),
        public_route(&up.url())
    ))
    .await
}

/// Reads until the gateway closes `s`, which must happen within 5 s and not before ~1 s (the
/// one-second idle bound, not something else); returns what came. `what` names the case.
async fn closed_by_idle_bound(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let start = Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "{what}: connection still open after 5 s");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{what}: closed too early ({:?}): not the timeout",
        start.elapsed()
    );
    rest
}

#[tokio::test]
async fn malformed_slowloris_partial_head_is_closed_after_header_read_timeout() {
    init();
    let up = Upstream::start().await;
    let gw = one_second_idle_bound(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Drip: a")
        .await
        .unwrap();
    closed_by_idle_bound(&mut s, "half a first head").await;
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_silent_connection_is_closed_after_header_read_timeout() {
    init();
    let up = Upstream::start().await;
    let gw = one_second_idle_bound(&up).await;
    // Nothing at all, and a prefix of the HTTP/2 preface (protocol detection must not wait forever).
    for sent in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..]] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        closed_by_idle_bound(&mut s, &format!("sent {sent:?}")).await;
    }
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_header_read_timeout_even_mid_head() {
    init();
    let up = Upstream::start().await;
    let gw = one_second_idle_bound(&up).await;
    // After a complete exchange: nothing more, or half of the next head.
    for (i, next) in [
        &b""[..],
        &b"GET /second HTTP/1.1\r\nHost: x\r\nX-Drip: a"[..],
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(raw_status(&read_one_response(&mut s).await), 200);
        s.write_all(next).await.unwrap();
        let rest = closed_by_idle_bound(&mut s, &format!("after a request, sent {next:?}")).await;
        assert!(rest.is_empty(), "nothing more is sent: {rest:?}");
        assert_eq!(
            up.count(),
            i + 1,
            "only the complete requests reached the upstream"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_in_flight_outlive_header_read_timeout_and_keep_their_connection() {
    init();
    let up = Upstream::start().await;
    let gw = one_second_idle_bound(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // A slow upstream: the response head comes after 1.5 s.
    let start = Instant::now();
    s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let slow = read_one_response(&mut s).await;
    assert_eq!(raw_status(&slow), 200);
    assert!(slow.ends_with("slow done"), "{slow}");
    assert!(start.elapsed() >= Duration::from_millis(1500));
    // A long download: the body takes 8 x 250 ms = 2 s.
    let start = Instant::now();
    s.write_all(b"GET /drip?chunks=8&ms=250 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.ends_with(b"\r\n0\r\n\r\n") {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(
            n > 0,
            "closed mid-body: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(raw_status(&text), 200);
    assert!(text.contains("drip 7\n"), "{text}");
    assert!(start.elapsed() >= Duration::from_secs(2));
    // The connection is still good for another request.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw_status(&read_one_response(&mut s).await), 200);
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_http2_connection_is_shut_down_after_header_read_timeout() {
    use http_body_util::{BodyExt, Empty};
    init();
    let up = Upstream::start().await;
    let gw = one_second_idle_bound(&up).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("http://gateway.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // A stream in flight longer than the timeout is not cut.
    let resp = tx.send_request(get("/slow?ms=1500")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slow done");
    // Then idle: the gateway ends the connection (GOAWAY) about a second later.
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "HTTP/2 connection still open after 5 s idle");
    assert!(
        idle_from.elapsed() >= Duration::from_millis(800),
        "closed too early ({:?})",
        idle_from.elapsed()
    );
    assert!(tx.send_request(get("/late")).await.is_err());
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 11. gateway endpoints

#[tokio::test]
async fn auth_endpoints_health_ready_and_unknown_never_reach_upstream() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let c = client();
    let r = c.get(gw.url("/.auth/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(gw.url("/.auth/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for p in ["/.auth/nope", "/.auth/nope/deeper", "/.auth"] {
        let r = c
            .get(gw.url(p))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }
    // Spellings that normalise into /.auth/ are still the gateway's.
    for p in ["/x/../.auth/nope", "/%2eauth/nope", "//.auth/health"] {
        let r = raw_request(
            gw.addr,
            &format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(matches!(raw_status(&r), 200 | 404), "{p}: {r}");
    }
    assert_eq!(
        up.count(),
        0,
        "/.auth/* reached the upstream: {:?}",
        up.seen().iter().map(|s| s.uri.clone()).collect::<Vec<_>>()
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 12. connection cap

#[tokio::test]
async fn connection_cap_third_connection_waits_until_one_closes() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        server_section("max_connections = 2"),
        public_route(&up.url())
    ))
    .await;
    // Two kept-alive connections, each with a completed request so they are surely accepted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /.auth/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_one_response(&mut s).await;
        assert_eq!(raw_status(&r), 200, "{r}");
        held.push(s);
    }
    let url = gw.url("/third");
    let mut third = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "third connection served while two were held"
    );
    assert_eq!(up.count(), 0);

    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("third request not served after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.last().uri, "/third");
    drop(held);
    gw.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_route_tls_ca_is_reached_and_unknown_ca_is_502() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (up, ca) = Upstream::start_tls(dir.path()).await;
    let port = up.addr.port();
    let gw = TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/trusted\"\nupstream = \"https://localhost:{port}\"\naccess = \"public\"\ntls_ca = \"{}\"\n\n\
         [[routes]]\npath_prefix = \"/untrusted\"\nupstream = \"https://localhost:{port}\"\naccess = \"public\"\n",
        ca.display()
    ))
    .await;
    let r = client()
        .post(gw.url("/trusted/x?q=1"))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "over tls");
    let seen = up.last();
    assert_eq!(seen.uri, "/trusted/x?q=1");
    assert_eq!(seen.one("host").unwrap(), format!("localhost:{port}"));
    let before = up.count();
    let r = client().get(gw.url("/untrusted/x")).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a certificate from an unknown CA is refused"
    );
    assert_eq!(up.count(), before, "nothing reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn path_parameters_before_the_last_segment_and_bad_host_headers_answer_400() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/admin\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n",
        u = up.url()
    ))
    .await;
    for path in ["/;/admin/users", "/x;y/admin", "/public;a=b/admin/x"] {
        let resp = raw_request(
            gw.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(raw_status(&resp), 400, "{path}: {resp}");
    }
    for host in ["evil.com?.example.com", "a.com:80x", "a b"] {
        let resp = raw_request(
            gw.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(raw_status(&resp), 400, "Host {host}: {resp}");
    }
    let resp = raw_request(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "two Host headers: {resp}");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // Parameters in the last segment still work (e.g. ;jsessionid=), on the matching route.
    let resp = raw_request(
        gw.addr,
        "GET /page;jsessionid=1 HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    gw.shutdown().await;
}

#[tokio::test]
async fn dual_stack_listener_trusts_ipv4_proxy_by_its_ipv4_address() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[server]\nlisten = \"[::]:0\"\npublic_url = \"http://gateway.test\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\naccess = \"public\"\n",
        up.url()
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/x", gw.addr.port());
    let r = client()
        .get(url)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().one("x-forwarded-for").unwrap(),
        "203.0.113.7, 127.0.0.1",
        "the IPv4-mapped peer is the trusted 127.0.0.1"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_tunnel_keeps_its_connection_slot_under_max_connections() {
    use futures_util::{SinkExt, StreamExt};
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\nmax_connections = 1\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\naccess = \"public\"\n",
        up.url()
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream)
        .await
        .unwrap();
    ws.send("hi".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "hi");
    // The tunnel holds the only slot: a new connection is not served while it is open.
    let waiting = tokio::spawn({
        let url = gw.url("/x");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let mut waiting = waiting;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(
        early.is_err(),
        "a second connection was served while the tunnel held the only slot"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "served once the tunnel closed");
    gw.shutdown().await;
}
