mod support;
use support::*;

#[tokio::test]
async fn public_route_proxies_method_query_and_body_exactly() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\naccess = \"public\"\n",
        up.url()
    ))
    .await;
    let r = client()
        .put(gw.url("/a/b?x=1&y=%20z"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-seen-method"], "PUT");
    assert!(
        r.headers().get("x-upstream-secret").is_none(),
        "Connection-named response header leaked"
    );
    assert!(r.headers().get("keep-alive").is_none());
    assert_eq!(r.text().await.unwrap(), "hello body");
    let s = up.last();
    assert_eq!(s.uri, "/a/b?x=1&y=%20z");
    assert_eq!(s.one("host").unwrap(), up.addr.to_string());
    gw.shutdown().await;
}
