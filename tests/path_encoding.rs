//! Paths that a lenient app would decode differently from the gateway (issue 12, item 4): double
//! encoding, percent-encoded bytes that are not UTF-8, encoded `;` `?` `#`. Each is refused with
//! 400 before anything reaches the upstream; valid multibyte escapes still pass, still encoded.
mod support;
use support::*;

/// A public `/public` and an authenticated `/admin` on the same recording upstream: what a
/// lenient app reads as `/admin` must never be forwarded from `/public`.
async fn gateway(up: &Upstream) -> TestGateway {
    let u = up.url();
    TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/public\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/admin\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n"
    ))
    .await
}

async fn get(gw: &TestGateway, path: &str) -> String {
    raw_request(
        gw.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn path_double_encoding_and_invalid_utf8_escapes_get_400_and_never_reach_the_upstream() {
    init();
    let up = Upstream::start().await;
    let gw = gateway(&up).await;
    let refused = [
        // Decoded twice: `/public/../../admin/`.
        ("/public/%252e%252e/admin/", "double percent-encoding"),
        ("/public/%252E%252E/admin/", "double percent-encoding"),
        (
            "/public/%25%32%65%25%32%65/admin/",
            "double percent-encoding",
        ),
        ("/public/%25u002e%25u002e/admin/", "double percent-encoding"),
        ("/public/..%252fadmin/", "double percent-encoding"),
        // Overlong `.` and `/`, which lenient UTF-8 decoders read as ASCII.
        ("/public/%c0%ae%c0%ae/admin/", "not valid UTF-8"),
        ("/public/%e0%80%ae%e0%80%ae/admin/", "not valid UTF-8"),
        ("/public/..%c0%afadmin/", "not valid UTF-8"),
        ("/public/%f0%80%80%ae/admin", "not valid UTF-8"),
        // Lone continuation byte, truncated sequence, surrogate, beyond U+10FFFF.
        ("/public/%ae", "not valid UTF-8"),
        ("/public/caf%c3", "not valid UTF-8"),
        ("/public/caf%c3/x", "not valid UTF-8"),
        ("/public/%e2%82", "not valid UTF-8"),
        ("/public/%ed%a0%80", "not valid UTF-8"),
        ("/public/%f4%90%80%80", "not valid UTF-8"),
        ("/public/%ff", "not valid UTF-8"),
        // Decoded and split again by an app: `/admin` behind a public route, `..` behind `/public`.
        ("/admin%3f/x", "encoded ';', '?' or '#'"),
        ("/admin%23/x", "encoded ';', '?' or '#'"),
        ("/admin%3bx/users", "encoded ';', '?' or '#'"),
        ("/public/..%3f/admin", "encoded ';', '?' or '#'"),
    ];
    for (path, why) in refused {
        let r = get(&gw, path).await;
        assert_eq!(raw_status(&r), 400, "{path}: {r}");
        assert!(r.contains(why), "{path}: the 400 says why ({why}): {r}");
    }
    assert_eq!(
        up.count(),
        0,
        "a refused path reached the upstream: {:?}",
        up.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );

    // Valid UTF-8 escapes pass, still encoded (hex in upper case, RFC 3986 §6.2.2.1).
    for (path, want) in [
        ("/public/caf%c3%a9", "/public/caf%C3%A9"),
        (
            "/public/caf%C3%A9/x?q=%c3%a9",
            "/public/caf%C3%A9/x?q=%c3%a9",
        ),
        (
            "/public/%e2%82%ac%f0%9f%98%80",
            "/public/%E2%82%AC%F0%9F%98%80",
        ),
        ("/public/100%25", "/public/100%25"),
    ] {
        let r = get(&gw, path).await;
        assert_eq!(raw_status(&r), 200, "{path}: {r}");
        assert_eq!(up.last().uri, want, "{path}");
    }
    gw.shutdown().await;
}
