//! Criterion benches of the verify path, each beside a naive baseline measured in the same run.
//!
//! Run: `cargo bench --bench verify_path` (add `-- <filter>` to pick a group).

use futures_util::FutureExt as _;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authgate::auth::session::{MemorySessionStore, SessionStore};
use authgate::config::{Config, JwtAlgorithm};
use authgate::pipeline::headers::{find_cookie, CookieLookup};
use authgate::pipeline::{decide, ConnInfo, Decision, RequestCtx};
use authgate::state::{Live, Runtime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Request};

// Same allocator as the authgate binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A realistic Cookie header: analytics, consent, a CSRF cookie, then ours.
const COOKIE_HEADER: &str = "_ga=GA1.1.1234567890.1700000000; _ga_ABCDEF=GS1.1.1700000000.1.1.1700000001.0.0.0; cookie_consent=necessary%2Canalytics; theme=dark; authgate_csrf=q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c; authgate=REPLACE_ME_WITH_SESSION_ID_OF_43_CHARACTERS";

fn bench_cookie(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    h.insert("cookie", HeaderValue::from_static(COOKIE_HEADER));
    let mut g = c.benchmark_group("cookie_extract");
    g.bench_function("authgate_scan", |b| {
        b.iter(|| match find_cookie(black_box(&h), "authgate") {
            CookieLookup::One(v) => v.len(),
            _ => 0,
        })
    });
    g.bench_function("baseline_cookie_crate_split_parse", |b| {
        b.iter(|| {
            let v = black_box(&h).get("cookie").unwrap().to_str().unwrap();
            cookie::Cookie::split_parse(v)
                .filter_map(Result::ok)
                .find(|c| c.name() == "authgate")
                .map_or(0, |c| c.value().len())
        })
    });
    g.bench_function("baseline_naive_hashmap", |b| {
        b.iter(|| {
            let v = black_box(&h).get("cookie").unwrap().to_str().unwrap();
            let m: HashMap<String, String> = v
                .split("; ")
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            m.get("authgate").map_or(0, |v| v.len())
        })
    });
    g.finish();
}

fn bench_sessions(c: &mut Criterion) {
    use base64::Engine;
    let mut g = c.benchmark_group("session_lookup");
    for &n in &[10_000u64, 1_000_000] {
        let store =
            MemorySessionStore::new(Duration::from_secs(3600), Duration::from_secs(7200), n * 2);
        // Baselines: a moka cache with the same idle/lifetime limits (the first implementation),
        // and the naive Mutex<HashMap<String, _>>.
        let moka: moka::sync::Cache<[u8; 32], Arc<str>> = moka::sync::Cache::builder()
            .max_capacity(n * 2)
            .time_to_idle(Duration::from_secs(3600))
            .time_to_live(Duration::from_secs(7200))
            .build();
        let naive: Mutex<HashMap<String, Arc<str>>> = Mutex::new(HashMap::new());
        let user: Arc<str> = Arc::from("alice");
        let mut ids = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = store.insert(user.clone(), 0).unwrap();
            let key = authgate::auth::session::decode_key(&id).unwrap();
            moka.insert(key, user.clone());
            naive.lock().unwrap().insert(id.clone(), user.clone());
            ids.push(id);
        }
        moka.run_pending_tasks();
        let miss = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("authgate_hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % ids.len();
                matches!(store.get(black_box(&ids[i])), Ok(Some(_)))
            })
        });
        g.bench_with_input(BenchmarkId::new("authgate_miss", n), &n, |b, _| {
            b.iter(|| matches!(store.get(black_box(&miss)), Ok(Some(_))))
        });
        g.bench_with_input(BenchmarkId::new("baseline_moka_hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % ids.len();
                let key = authgate::auth::session::decode_key(black_box(&ids[i])).unwrap();
                moka.get(&key).is_some()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("baseline_mutex_hashmap_hit", n),
            &n,
            |b, _| {
                b.iter(|| {
                    i = (i + 7919) % ids.len();
                    naive.lock().unwrap().get(black_box(&ids[i])).is_some()
                })
            },
        );
    }
    g.finish();
}

fn runtime(extra: &str) -> (Runtime, Live) {
    authgate::server::tls::install_crypto_provider();
    let hash = authgate::auth::password::hash(b"pw").unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gw.test\"\n{extra}\n[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\nemail = \"alice@example.com\"\ngroups = [\"admins\", \"staff\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\naccess = \"authenticated\"\n\n[[routes]]\npath_prefix = \"/public\"\nupstream = \"http://127.0.0.1:9\"\naccess = \"public\"\n"
    );
    let cfg = Config::from_toml_str(&toml, Path::new("bench.toml")).unwrap();
    let live = Live::new(&cfg);
    (Runtime::build(cfg).unwrap(), live)
}

fn request(path: &str, cookie: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header("host", "gw.test")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("x-forwarded-user", "mallory")
        .header("cookie", cookie)
        .body(())
        .unwrap()
}

fn conn() -> ConnInfo {
    ConnInfo::new(
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
        false,
    )
}

/// A session for alice in the (memory) store, as a login makes it.
fn alice_session(rt: &Runtime, live: &Live) -> String {
    live.sessions
        .create(
            Arc::from("alice"),
            rt.users.get("alice").unwrap().password_version,
            authgate::auth::factors::PWD,
            None,
        )
        .now_or_never()
        .expect("the memory store answers at once")
        .unwrap()
}

fn bench_headers(c: &mut Criterion) {
    let (rt, live) = runtime("");
    let id = alice_session(&rt, &live);
    let cookie = COOKIE_HEADER.replace("REPLACE_ME_WITH_SESSION_ID_OF_43_CHARACTERS", &id);
    let auth = authgate::auth::authenticate(&rt, &live, &request("/", &cookie).headers().clone())
        .unwrap()
        .unwrap();
    let route = rt.router.find(Some("gw.test"), "/x").unwrap();
    let rid = HeaderValue::from_static("0000000000000001");
    let conn = conn();
    let mut g = c.benchmark_group("headers_strip_inject");
    g.bench_function("authgate", |b| {
        b.iter_batched(
            || request("/x", &cookie),
            |mut req| {
                authgate::pipeline::strip_phase(&rt, req.headers_mut(), &conn);
                authgate::pipeline::inject_identity(&rt, req.headers_mut(), &auth);
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("authgate_whole_upstream_request", |b| {
        b.iter_batched(
            || request("/x", &cookie),
            |mut req| {
                let (upgrade, trusted) =
                    authgate::pipeline::strip_phase(&rt, req.headers_mut(), &conn);
                let ctx = RequestCtx {
                    conn: &conn,
                    request_id: &rid,
                    path: "/x".to_string().into(),
                    trusted,
                    upgrade,
                };
                authgate::pipeline::build_upstream_phase(&rt, &mut req, route, &ctx, Some(&auth));
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let names: Vec<String> = rt.strip_names.names().to_vec();
    g.bench_function("baseline_naive_lowercase_alloc", |b| {
        b.iter_batched(
            || request("/x", &cookie),
            |mut req| {
                // Naive: allocate a normalised copy of every header name, rebuild the map.
                let mut out = HeaderMap::new();
                for (k, v) in req.headers().iter() {
                    let norm = k.as_str().to_lowercase().replace(['_', '.'], "-");
                    if !names.contains(&norm) {
                        out.append(k.clone(), v.clone());
                    }
                }
                out.insert(
                    "x-forwarded-user",
                    HeaderValue::from_str(&auth.user.username).unwrap(),
                );
                out.insert(
                    "x-forwarded-email",
                    HeaderValue::from_str(auth.user.email.as_deref().unwrap()).unwrap(),
                );
                out.insert(
                    "x-forwarded-groups",
                    HeaderValue::from_str(&auth.user.groups.join(",")).unwrap(),
                );
                *req.headers_mut() = out;
                req
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_decision(c: &mut Criterion) {
    let (rt, live) = runtime("");
    let id = alice_session(&rt, &live);
    let cookie = COOKIE_HEADER.replace("REPLACE_ME_WITH_SESSION_ID_OF_43_CHARACTERS", &id);
    let rid = HeaderValue::from_static("0000000000000001");
    let conn = conn();
    let mut g = c.benchmark_group("decision");
    g.bench_function("session_mode_authenticated", |b| {
        decide_bench(b, &rt, &live, "/app/items?page=2", &cookie, &conn, &rid)
    });
    g.bench_function("baseline_public_route_no_auth", |b| {
        decide_bench(b, &rt, &live, "/public/items?page=2", &cookie, &conn, &rid)
    });
    g.finish();
}

/// Times one whole authentication decision (request in → upstream request out) for `path`.
fn decide_bench(
    b: &mut criterion::Bencher<'_>,
    rt: &Runtime,
    live: &Live,
    path: &str,
    cookie: &str,
    conn: &ConnInfo,
    rid: &HeaderValue,
) {
    b.iter_batched(
        || request(path, cookie),
        |mut req| {
            matches!(
                decide(rt, live, &mut req, conn, rid),
                Decision::Forward { .. }
            )
        },
        criterion::BatchSize::SmallInput,
    )
}

/// A JWT-mode runtime for `alg` with a fresh key in `dir`, and a token for alice.
fn jwt_runtime(alg: &str, dir: &Path) -> (Runtime, Live, String) {
    let a = JwtAlgorithm::parse(alg).unwrap();
    let prefix = dir.join(alg);
    authgate::auth::jwt::generate_key(a, &prefix).unwrap();
    let key = if a == JwtAlgorithm::HS256 {
        prefix.with_extension("secret")
    } else {
        prefix.with_extension("pem")
    };
    let extra = format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\nalgorithm = \"{alg}\"\nsigning_key = \"{}\"\n",
        key.display()
    );
    let (rt, live) = runtime(&extra);
    let now = authgate::auth::session::unix_now();
    let user = rt.users.get("alice").unwrap();
    let token = rt
        .jwt
        .as_ref()
        .unwrap()
        .issue_stamped(
            &user.username,
            user.email.as_deref(),
            &user.groups,
            now,
            authgate::auth::jwt::Stamp {
                now_ms: now * 1000,
                password_version: Some(user.password_version),
                amr: authgate::auth::factors::PWD,
            },
            rt.config.auth.max_lifetime,
        )
        .unwrap()
        .token;
    (rt, live, token)
}

fn bench_jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("jwt_verify");
    for alg in ["HS256", "EdDSA", "ES256", "RS256"] {
        let (rt, live, token) = jwt_runtime(alg, dir.path());
        let keys = rt.jwt.as_ref().unwrap();
        let max = rt.config.auth.max_lifetime;
        let now = authgate::auth::session::unix_now();
        g.bench_function(BenchmarkId::new("authgate_uncached", alg), |b| {
            b.iter(|| keys.verify(black_box(&token), now, max).is_ok())
        });
        g.bench_function(BenchmarkId::new("authgate_cached", alg), |b| {
            b.iter(|| {
                live.token_cache
                    .verify(keys, black_box(&token), now, max)
                    .is_ok()
            })
        });
        // Naive baseline: what a quick integration does — parse the key on every request.
        let a = JwtAlgorithm::parse(alg).unwrap();
        let prefix = dir.path().join(alg);
        let material = if a == JwtAlgorithm::HS256 {
            std::fs::read(prefix.with_extension("secret")).unwrap()
        } else {
            std::fs::read(format!("{}.pub.pem", prefix.display())).unwrap()
        };
        let jalg = match a {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        };
        g.bench_function(
            BenchmarkId::new("baseline_parse_key_per_request", alg),
            |b| {
                b.iter(|| {
                    let key = match a {
                        JwtAlgorithm::HS256 => {
                            jsonwebtoken::DecodingKey::from_secret(material.trim_ascii())
                        }
                        JwtAlgorithm::EdDSA => {
                            jsonwebtoken::DecodingKey::from_ed_pem(&material).unwrap()
                        }
                        JwtAlgorithm::ES256 => {
                            jsonwebtoken::DecodingKey::from_ec_pem(&material).unwrap()
                        }
                        JwtAlgorithm::RS256 => {
                            jsonwebtoken::DecodingKey::from_rsa_pem(&material).unwrap()
                        }
                    };
                    let mut v = jsonwebtoken::Validation::new(jalg);
                    v.set_audience(&["authgate"]);
                    jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &v).is_ok()
                })
            },
        );
    }
    g.finish();
}

fn bench_decision_jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rid = HeaderValue::from_static("0000000000000001");
    let conn = conn();
    let mut g = c.benchmark_group("decision");
    for alg in ["HS256", "EdDSA"] {
        let (rt, live, token) = jwt_runtime(alg, dir.path());
        let cookie = COOKIE_HEADER.replace("REPLACE_ME_WITH_SESSION_ID_OF_43_CHARACTERS", &token);
        g.bench_function(
            BenchmarkId::new("jwt_mode_authenticated_cached", alg),
            |b| decide_bench(b, &rt, &live, "/app/items?page=2", &cookie, &conn, &rid),
        );
    }
    g.finish();
}

/// What the access log and the metrics cost per request, each beside its "off" baseline:
/// the metric updates a proxied request makes (enabled vs disabled registry), the worker's
/// share of the access log (build the record, hand it to the queue) and the writer thread's
/// (format one line).
fn bench_telemetry(c: &mut Criterion) {
    use authgate::telemetry::access::{AccessRecord, LoggedPath};
    use authgate::telemetry::metrics::{AuthResult, Mechanism, Metrics};
    use authgate::telemetry::sink::{Entry, Sink};
    let mut g = c.benchmark_group("telemetry_per_request");
    for (name, enabled) in [
        ("metrics_enabled", true),
        ("baseline_metrics_disabled", false),
    ] {
        let m = Metrics::new("memory", enabled);
        let route = m.route("app");
        let took = Duration::from_micros(180);
        g.bench_function(name, |b| {
            b.iter(|| {
                if m.enabled {
                    m.in_flight.inc();
                }
                m.auth(Mechanism::Session, AuthResult::Ok);
                route.upstream_ok(black_box(took));
                route.request(black_box(200), black_box(took));
                if m.enabled {
                    m.in_flight.dec();
                }
            })
        });
    }
    let app: Arc<str> = Arc::from("app");
    let client: std::net::SocketAddr = "127.0.0.1:50312".parse().unwrap();
    let record = |path: &str| AccessRecord {
        time: std::time::SystemTime::now(),
        request_id: *b"9adfcd740000000a",
        client,
        method: http::Method::GET,
        path: LoggedPath::new(black_box(path)),
        version: http::Version::HTTP_11,
        route: Some(app.clone()),
        status: 200,
        latency_us: 183,
        bytes: Some(512),
        trace_id: None,
    };
    let sink = Sink::spawn("bench-access", Box::new(std::io::sink())).unwrap();
    // Pushes are timed in chunks that fit the queue, which is emptied (untimed) between them:
    // a full queue would time the drop path instead of the hand-over.
    let long = format!("/app/{}", "x".repeat(100));
    for (name, path) in [
        ("access_log_worker_build_and_push", "/app/items"),
        (
            "access_log_worker_build_and_push_path_over_64_bytes",
            long.as_str(),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(16_000);
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        sink.push(Entry::Access(
                            record(path),
                            authgate::config::LogFormat::Text,
                        ));
                    }
                    took += t.elapsed();
                    left -= n;
                    assert!(sink.flush(Duration::from_secs(5)));
                }
                took
            })
        });
    }
    assert_eq!(
        sink.stats()
            .dropped(authgate::telemetry::sink::Stream::Access),
        0
    );
    let r = record("/app/items");
    let mut buf = Vec::with_capacity(256);
    g.bench_function("access_log_writer_format_text", |b| {
        b.iter(|| {
            buf.clear();
            r.format(authgate::config::LogFormat::Text, &mut buf);
            black_box(buf.len())
        })
    });
    g.bench_function("access_log_writer_format_json", |b| {
        b.iter(|| {
            buf.clear();
            r.format(authgate::config::LogFormat::Json, &mut buf);
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_telemetry,
    bench_cookie,
    bench_sessions,
    bench_headers,
    bench_decision,
    bench_decision_jwt,
    bench_jwt
);
criterion_main!(benches);
