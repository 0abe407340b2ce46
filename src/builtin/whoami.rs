//! `builtin:whoami`: answers with the request it received, like the `whoami` container used to test
//! proxies. It sees exactly what an upstream would: the request after every gateway phase.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::body::Body;

/// Describes the request as HTML (browsers) or JSON.
pub fn respond<B>(req: &Request<B>, client: SocketAddr) -> Response<Body> {
    let html = crate::error::wants_html(req.headers());
    let headers: Vec<(&str, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (body, ctype) = if html {
        let mut rows = String::new();
        for (k, v) in &headers {
            rows.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                html_escape::encode_text(k),
                html_escape::encode_text(v)
            ));
        }
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>whoami</title><style>{css}</style></head><body><main class=\"card wide\"><h1>whoami</h1><p>What the upstream received through authgate.</p><dl><dt>Method</dt><dd>{method}</dd><dt>Path</dt><dd>{path}</dd><dt>Query</dt><dd>{query}</dd><dt>Client</dt><dd>{client}</dd></dl><table><caption>Headers</caption>{rows}</table><form method=\"get\" action=\"/.auth/logout\"><button type=\"submit\">Sign out</button></form></main></body></html>",
            css = crate::PAGE_CSS,
            method = html_escape::encode_text(req.method().as_str()),
            path = html_escape::encode_text(req.uri().path()),
            query = html_escape::encode_text(req.uri().query().unwrap_or("")),
            client = client,
        );
        (page, "text/html; charset=utf-8")
    } else {
        let map: serde_json::Map<String, serde_json::Value> = {
            let mut m = serde_json::Map::new();
            for (k, v) in &headers {
                match m.get_mut(*k) {
                    Some(serde_json::Value::Array(a)) => a.push(v.clone().into()),
                    _ => {
                        m.insert(
                            (*k).to_string(),
                            serde_json::Value::Array(vec![v.clone().into()]),
                        );
                    }
                }
            }
            m
        };
        let j = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "client": client.to_string(),
            "headers": map,
        });
        (j.to_string(), "application/json")
    };
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
