//! A hostile OpenID provider on a loopback port, for the answers a certified provider never
//! gives: a wrong `iss`, a wrong `aud`, `alg: none`, an HS256 token keyed with the public key
//! set, an expired token, an unknown `kid`, a foreign `state`, a mix-up…
//!
//! Honest by default ([`Attack::None`]): discovery, an authorization endpoint that answers at
//! once with a code (no login page; the user is always `mallory`), a token endpoint that
//! checks the client's secret (Basic or form), the code (single use), the `redirect_uri` and
//! the PKCE verifier (S256), an ES256 key set, userinfo, and an end-session endpoint. Each
//! attack changes one thing in what it says.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The one user this provider signs in.
pub const SUB: &str = "hostile-user-1";
pub const USER: &str = "mallory";
pub const EMAIL: &str = "mallory@example.com";

/// What the provider does wrong. Every variant but `None` and `Hs256WithClientSecret` must be
/// refused by a relying party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    /// An honest provider.
    None,
    /// The discovery document names another issuer.
    DiscoveryIssuer(String),
    /// The ID token's `iss` is this one (another provider's: a mix-up).
    IdTokenIss(String),
    /// The authorization response's `iss` parameter (RFC 9207) is this one.
    CallbackIss(String),
    /// The authorization response has no `iss` although discovery says it always does.
    NoCallbackIss,
    /// The authorization response carries a `state` the relying party never issued.
    ForeignState,
    /// The authorization response is an error (`error=server_error`), no code.
    ErrorParameter,
    /// `aud` is another client.
    WrongAudience,
    /// `aud` lists this client and another, with `azp` the other.
    AzpOfAnotherClient,
    /// `aud` lists this client and another, and there is no `azp`.
    SeveralAudiencesNoAzp,
    /// `nonce` is not the one sent.
    WrongNonce,
    /// No `nonce` at all.
    NoNonce,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256, keyed with the bytes of the published key set (the key-confusion attack).
    Hs256WithPublicKey,
    /// HS256, keyed with the client secret: valid only where the configuration allows HS256.
    Hs256WithClientSecret,
    /// A signature that does not verify (one byte changed).
    BadSignature,
    /// A signature by a key the provider does not publish, named by an unknown `kid`.
    UnknownKid,
    /// `exp` an hour ago.
    Expired,
    /// `iat` an hour ahead.
    IssuedInTheFuture,
    /// No `sub`.
    NoSubject,
    /// `email_verified: false`.
    UnverifiedEmail,
    /// No `email_verified` claim at all (Entra ID's way): the email is not vouched for.
    NoEmailVerified,
    /// The ID token lacks groups; userinfo answers for another subject.
    UserinfoOtherSubject,
    /// The token endpoint refuses the code (`invalid_grant`).
    TokenEndpointRefuses,
    /// The token endpoint answers 200 with HTML.
    TokenAnswerNotJson,
    /// The token endpoint answers 200 with JSON but no `id_token`.
    NoIdToken,
    /// The token endpoint answers with 1 MiB.
    HugeTokenAnswer,
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
}

struct Inner {
    issuer: String,
    client_id: String,
    client_secret: String,
    attack: Mutex<Attack>,
    grants: Mutex<HashMap<String, Grant>>,
    /// Access tokens handed out, with the subject each is for.
    tokens: Mutex<HashMap<String, String>>,
    /// Token-endpoint requests refused, with why (the tests read it to tell a gateway bug from
    /// an attack).
    refusals: Mutex<Vec<String>>,
    key: SigningKey,
    other_key: SigningKey,
}

/// A running hostile provider (it stops when the test's runtime ends).
pub struct HostileIdp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
    inner: Arc<Inner>,
}

impl HostileIdp {
    /// A provider with one confidential client.
    pub async fn start(client_id: &str, client_secret: &str) -> HostileIdp {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            attack: Mutex::new(Attack::None),
            grants: Mutex::default(),
            tokens: Mutex::default(),
            refusals: Mutex::default(),
            key: SigningKey::from_bytes(&[7u8; 32].into()).unwrap(),
            other_key: SigningKey::from_bytes(&[9u8; 32].into()).unwrap(),
        });
        let i2 = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    return;
                };
                let inner = i2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HostileIdp {
            addr,
            issuer,
            inner,
        }
    }

    /// From now on, the provider does this.
    pub fn set(&self, attack: Attack) {
        *self.inner.attack.lock().unwrap() = attack;
    }

    /// What the token endpoint refused so far (empty when the gateway spoke correctly).
    pub fn refusals(&self) -> Vec<String> {
        self.inner.refusals.lock().unwrap().clone()
    }

    /// Follows the gateway's redirect to the authorization endpoint; returns where the provider
    /// sends the browser back (the callback URL with code and state).
    pub async fn authorize(&self, authorize_url: &str) -> String {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let r = http.get(authorize_url).send().await.unwrap();
        let status = r.status();
        match r.headers().get("location") {
            Some(l) if status == 302 => l.to_str().unwrap().to_string(),
            _ => panic!(
                "the hostile provider refused the authorization request ({status}): {}",
                r.text().await.unwrap_or_default()
            ),
        }
    }
}

fn json_answer(status: u16, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn text_answer(status: u16, s: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html")
        .body(Full::new(s.into()))
        .unwrap()
}

fn query_of(uri: &http::Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn random() -> String {
    super::oidc::random_token()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwk(key: &SigningKey, kid: &str) -> Value {
    let p = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(p.y().unwrap()),
    })
}

impl Inner {
    fn jwks(&self) -> Value {
        json!({ "keys": [jwk(&self.key, "k1")] })
    }

    fn discovery(&self, attack: &Attack) -> Value {
        let base = &self.issuer;
        let issuer = match attack {
            Attack::DiscoveryIssuer(i) => i.clone(),
            _ => self.issuer.clone(),
        };
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
            "userinfo_endpoint": format!("{base}/userinfo"),
            "end_session_endpoint": format!("{base}/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn authorize(&self, attack: &Attack, q: &HashMap<String, String>) -> Response<Full<Bytes>> {
        let need = |k: &str| q.get(k).cloned().unwrap_or_default();
        if need("client_id") != self.client_id {
            return text_answer(400, "unknown client_id");
        }
        if need("response_type") != "code" {
            return text_answer(400, "response_type must be code");
        }
        if need("code_challenge_method") != "S256" || need("code_challenge").is_empty() {
            return text_answer(400, "PKCE with S256 is required");
        }
        if !need("scope").split(' ').any(|s| s == "openid") {
            return text_answer(400, "scope must contain openid");
        }
        let redirect_uri = need("redirect_uri");
        let Ok(mut back) = url::Url::parse(&redirect_uri) else {
            return text_answer(400, "bad redirect_uri");
        };
        let code = random();
        self.grants.lock().unwrap().insert(
            code.clone(),
            Grant {
                client_id: need("client_id"),
                redirect_uri,
                nonce: q.get("nonce").cloned(),
                challenge: need("code_challenge"),
            },
        );
        {
            let mut p = back.query_pairs_mut();
            if *attack == Attack::ErrorParameter {
                p.append_pair("error", "server_error");
            } else {
                p.append_pair("code", &code);
            }
            let state = match attack {
                Attack::ForeignState => random(),
                _ => need("state"),
            };
            p.append_pair("state", &state);
            match attack {
                Attack::NoCallbackIss => {}
                Attack::CallbackIss(i) => {
                    p.append_pair("iss", i);
                }
                _ => {
                    p.append_pair("iss", &self.issuer);
                }
            }
        }
        Response::builder()
            .status(302)
            .header("location", back.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    fn refuse(&self, why: &str) -> Response<Full<Bytes>> {
        self.refusals.lock().unwrap().push(why.to_string());
        json_answer(
            400,
            &json!({ "error": "invalid_grant", "error_description": why }),
        )
    }

    fn token(
        &self,
        attack: &Attack,
        authorization: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        let field = |k: &str| form.get(k).cloned().unwrap_or_default();
        // Client authentication: client_secret_basic (RFC 6749 §2.3.1: each part form-encoded)
        // or client_secret_post.
        let (client_id, secret) = match authorization.and_then(|a| a.strip_prefix("Basic ")) {
            Some(b) => {
                let Ok(pair) = STANDARD.decode(b) else {
                    return self.refuse("Basic credentials are not base64");
                };
                let pair = String::from_utf8_lossy(&pair).into_owned();
                let Some((id, s)) = pair.split_once(':') else {
                    return self.refuse("Basic credentials without a colon");
                };
                let dec = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                (dec(id), dec(s))
            }
            None => (field("client_id"), field("client_secret")),
        };
        if client_id != self.client_id || secret != self.client_secret {
            return self.refuse("client authentication failed");
        }
        if field("grant_type") != "authorization_code" {
            return self.refuse("grant_type must be authorization_code");
        }
        let Some(grant) = self.grants.lock().unwrap().remove(&field("code")) else {
            return self.refuse("unknown or used code");
        };
        if grant.client_id != client_id {
            return self.refuse("code of another client");
        }
        if grant.redirect_uri != field("redirect_uri") {
            return self.refuse("redirect_uri differs from the authorization request's");
        }
        let verifier = field("code_verifier");
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        if verifier.len() < 43 || challenge != grant.challenge {
            return self.refuse("PKCE verifier does not match the challenge");
        }
        match attack {
            Attack::TokenEndpointRefuses => {
                return json_answer(400, &json!({ "error": "invalid_grant" }));
            }
            Attack::TokenAnswerNotJson => {
                return text_answer(200, "<html><body>Welcome!</body></html>");
            }
            Attack::HugeTokenAnswer => {
                let pad = "x".repeat(1 << 20);
                return json_answer(200, &json!({ "access_token": pad, "token_type": "Bearer" }));
            }
            _ => {}
        }
        let access_token = random();
        let sub = match attack {
            Attack::UserinfoOtherSubject => "somebody-else".to_string(),
            _ => SUB.to_string(),
        };
        self.tokens
            .lock()
            .unwrap()
            .insert(access_token.clone(), sub);
        let mut answer = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
        });
        if *attack != Attack::NoIdToken {
            answer["id_token"] = Value::String(self.id_token(attack, grant.nonce.as_deref()));
        }
        json_answer(200, &answer)
    }

    fn id_token(&self, attack: &Attack, nonce: Option<&str>) -> String {
        let t = now();
        let mut c = json!({
            "iss": self.issuer,
            "sub": SUB,
            "aud": self.client_id,
            "exp": t + 300,
            "iat": t,
            "auth_time": t,
            "preferred_username": USER,
            "email": EMAIL,
            "email_verified": true,
            "groups": ["staff"],
        });
        if let Some(n) = nonce {
            c["nonce"] = json!(n);
        }
        match attack {
            Attack::IdTokenIss(i) => c["iss"] = json!(i),
            Attack::WrongAudience => c["aud"] = json!("another-client"),
            Attack::AzpOfAnotherClient => {
                c["aud"] = json!([self.client_id, "another-client"]);
                c["azp"] = json!("another-client");
            }
            Attack::SeveralAudiencesNoAzp => {
                c["aud"] = json!([self.client_id, "another-client"]);
            }
            Attack::WrongNonce => c["nonce"] = json!(random()),
            Attack::NoNonce => {
                c.as_object_mut().unwrap().remove("nonce");
            }
            Attack::Expired => {
                c["iat"] = json!(t - 7200);
                c["exp"] = json!(t - 3600);
            }
            Attack::IssuedInTheFuture => {
                c["iat"] = json!(t + 3600);
                c["exp"] = json!(t + 7200);
            }
            Attack::NoSubject => {
                c.as_object_mut().unwrap().remove("sub");
            }
            Attack::UnverifiedEmail => c["email_verified"] = json!(false),
            Attack::NoEmailVerified => {
                c.as_object_mut().unwrap().remove("email_verified");
            }
            Attack::UserinfoOtherSubject => {
                c.as_object_mut().unwrap().remove("groups");
            }
            _ => {}
        }
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let payload = b64(&c);
        match attack {
            Attack::AlgNone => {
                let h = b64(&json!({ "alg": "none", "typ": "JWT" }));
                format!("{h}.{payload}.")
            }
            Attack::Hs256WithPublicKey | Attack::Hs256WithClientSecret => {
                let secret = match attack {
                    Attack::Hs256WithPublicKey => self.jwks().to_string().into_bytes(),
                    _ => self.client_secret.clone().into_bytes(),
                };
                let h = b64(&json!({ "alg": "HS256", "typ": "JWT", "kid": "k1" }));
                let input = format!("{h}.{payload}");
                let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
                let sig = aws_lc_rs::hmac::sign(&k, input.as_bytes());
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
            }
            _ => {
                let (key, kid) = match attack {
                    Attack::UnknownKid => (&self.other_key, "k2"),
                    _ => (&self.key, "k1"),
                };
                let h = b64(&json!({ "alg": "ES256", "typ": "JWT", "kid": kid }));
                let input = format!("{h}.{payload}");
                let sig: Signature = key.sign(input.as_bytes());
                let mut sig = sig.to_bytes().to_vec();
                if *attack == Attack::BadSignature {
                    sig[10] ^= 0x01;
                }
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
            }
        }
    }

    fn userinfo(&self, authorization: Option<&str>) -> Response<Full<Bytes>> {
        let token = authorization.and_then(|a| a.strip_prefix("Bearer "));
        let sub = token.and_then(|t| self.tokens.lock().unwrap().get(t).cloned());
        match sub {
            Some(sub) => json_answer(
                200,
                &json!({ "sub": sub, "email": EMAIL, "email_verified": true, "groups": ["staff"] }),
            ),
            None => json_answer(401, &json!({ "error": "invalid_token" })),
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let attack = inner.attack.lock().unwrap().clone();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path().to_string();
    let q = query_of(req.uri());
    let r = match (req.method().as_str(), path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => json_answer(200, &inner.discovery(&attack)),
        ("GET", "/jwks") => json_answer(200, &inner.jwks()),
        ("GET", "/authorize") => inner.authorize(&attack, &q),
        ("POST", "/token") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(&body).into_owned().collect();
            inner.token(&attack, authorization.as_deref(), &form)
        }
        ("GET", "/userinfo") => inner.userinfo(authorization.as_deref()),
        ("GET", "/logout") => text_answer(200, "signed out"),
        _ => text_answer(404, "not found"),
    };
    Ok(r)
}
