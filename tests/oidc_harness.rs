//! The OpenID Provider the OIDC tests sign in at (tests/oidc/provider.mjs, a real oidc-provider):
//! discovery, a whole authorization code flow with PKCE done by hand, and what the provider
//! refuses. Checks the harness itself; the gateway's OIDC login has its own tests.
mod support;
use support::oidc::*;
use support::*;

use base64::Engine;

const REDIRECT: &str = "http://gateway.test/.auth/oidc/corp/callback";
const SECRET: &str = "corp-secret";

fn corp() -> TestClient {
    TestClient::confidential("corp", SECRET, REDIRECT)
        .with_post_logout_redirect_uri("http://gateway.test/")
}

/// The query parameters of a URL.
fn query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// An authorization request URL; `challenge` None leaves PKCE out.
fn authorize_url(
    disco: &serde_json::Value,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    challenge: Option<&str>,
) -> String {
    let mut u = url::Url::parse(disco["authorization_endpoint"].as_str().unwrap()).unwrap();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid profile email groups")
            .append_pair("state", state)
            .append_pair("nonce", nonce);
        if let Some(c) = challenge {
            q.append_pair("code_challenge", c)
                .append_pair("code_challenge_method", "S256");
        }
    }
    u.to_string()
}

/// The claims of a JWT (not verified: the gateway's tests do that).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("not a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Signs `login` in through `client_id` and exchanges the code: (token response, userinfo).
async fn code_flow(provider: &OidcProvider, login: &str) -> (serde_json::Value, serde_json::Value) {
    let disco = provider.discovery().await;
    let (verifier, challenge) = pkce_pair();
    let (state, nonce) = (random_token(), random_token());
    let auth = authorize_url(&disco, "corp", REDIRECT, &state, &nonce, Some(&challenge));
    let location = sign_in_at_provider(&client(), &auth, login).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    let q = query(&location);
    assert_eq!(q["state"], state);
    assert_eq!(q["iss"], provider.issuer);
    let code = q.get("code").expect("no code in the callback");

    let r = client()
        .post(disco["token_endpoint"].as_str().unwrap())
        .basic_auth("corp", Some(SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tokens: serde_json::Value = r.json().await.unwrap();
    let id = jwt_claims(tokens["id_token"].as_str().expect("no id_token"));
    assert_eq!(id["iss"], provider.issuer.as_str());
    assert_eq!(id["aud"], "corp");
    assert_eq!(id["sub"], login);
    assert_eq!(id["nonce"], nonce.as_str());

    let r = client()
        .get(disco["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(tokens["access_token"].as_str().expect("no access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (tokens, r.json().await.unwrap())
}

#[tokio::test]
async fn discovery_and_a_code_flow_with_pkce() {
    let started = std::time::Instant::now();
    let provider = OidcProvider::start(&[corp()], false).await;
    eprintln!("provider started in {:?}", started.elapsed());
    let disco = provider.discovery().await;
    assert_eq!(disco["issuer"], provider.issuer.as_str());
    assert!(provider.issuer.starts_with("http://127.0.0.1:"));
    let methods = disco["code_challenge_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.iter().any(|m| m == "S256"), "{methods:?}");
    assert_eq!(
        disco["authorization_response_iss_parameter_supported"],
        true
    );
    assert!(disco["end_session_endpoint"].is_string());

    let (tokens, info) = code_flow(&provider, "alice").await;
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["email_verified"], true);
    assert_eq!(info["name"], "Alice Example");
    assert_eq!(info["preferred_username"], "alice");
    assert_eq!(info["groups"], serde_json::json!(["staff", "admins"]));
    // Conforming ID token: the scope claims come from userinfo only.
    let id = jwt_claims(tokens["id_token"].as_str().unwrap());
    assert!(
        id.get("email").is_none() && id.get("groups").is_none(),
        "{id}"
    );
}

#[tokio::test]
async fn id_token_claims_puts_the_scope_claims_in_the_id_token() {
    let provider = OidcProvider::start(&[corp()], true).await;
    let (tokens, info) = code_flow(&provider, "carol").await;
    let id = jwt_claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["email"], "carol@example.org");
    assert_eq!(id["email_verified"], false);
    assert_eq!(id["groups"], serde_json::json!(["guests"]));
    assert_eq!(info["groups"], serde_json::json!(["guests"]));
}

#[tokio::test]
async fn an_authorization_request_without_pkce_is_refused() {
    let public = TestClient::public("spa", "http://gateway.test/.auth/oidc/spa/callback");
    let provider = OidcProvider::start(&[corp(), public.clone()], false).await;
    let disco = provider.discovery().await;
    for (id, redirect) in [
        ("corp", REDIRECT),
        ("spa", public.redirect_uris[0].as_str()),
    ] {
        let auth = authorize_url(&disco, id, redirect, "st", "n", None);
        let r = client().get(&auth).send().await.unwrap();
        assert!(r.status().is_redirection(), "{id}: {}", r.status());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(redirect), "{location}");
        let q = query(&location);
        assert_eq!(q["error"], "invalid_request", "{id}: {location}");
        assert!(q["error_description"].contains("PKCE"), "{location}");
        assert_eq!(q["state"], "st");
        assert!(!q.contains_key("code"));
    }
}

#[tokio::test]
async fn unknown_logins_are_refused_and_a_provider_session_is_reused() {
    let provider = OidcProvider::start(&[corp()], false).await;
    let disco = provider.discovery().await;
    let (_, challenge) = pkce_pair();
    let auth = authorize_url(&disco, "corp", REDIRECT, "s1", "n1", Some(&challenge));
    let browser = provider_browser();
    match try_sign_in_with(&browser, &auth, "mallory").await {
        Err(ProviderError::LoginRefused(e)) => assert!(e.contains("mallory"), "{e}"),
        other => panic!("mallory was not refused: {other:?}"),
    }

    let first = sign_in_with(&browser, &auth, "bob").await;
    assert_eq!(query(&first)["state"], "s1");
    // Signed in with consent given: the provider sends the browser straight back.
    let auth2 = authorize_url(&disco, "corp", REDIRECT, "s2", "n2", Some(&challenge));
    let second = sign_in_with(&browser, &auth2, "ignored").await;
    let q = query(&second);
    assert_eq!(q["state"], "s2");
    assert!(q.contains_key("code"));

    let cancelled = cancel_at_provider(&auth).await;
    let q = query(&cancelled);
    assert_eq!(q["error"], "access_denied", "{cancelled}");
    assert_eq!(q["state"], "s1");
}

#[tokio::test]
async fn rp_initiated_logout_returns_to_the_client() {
    let provider = OidcProvider::start(&[corp()], false).await;
    let disco = provider.discovery().await;
    let browser = provider_browser();
    let (_, challenge) = pkce_pair();
    let auth = authorize_url(&disco, "corp", REDIRECT, "s", "n", Some(&challenge));
    sign_in_with(&browser, &auth, "alice").await;

    let mut end = url::Url::parse(disco["end_session_endpoint"].as_str().unwrap()).unwrap();
    end.query_pairs_mut()
        .append_pair("client_id", "corp")
        .append_pair("post_logout_redirect_uri", "http://gateway.test/")
        .append_pair("state", "bye");
    let back = sign_out_with(&browser, end.as_str()).await;
    assert!(back.starts_with("http://gateway.test/"), "{back}");
    assert_eq!(query(&back)["state"], "bye");

    // Signed out: the next authorization request asks for the login again.
    match try_sign_in_with(&browser, &auth, "nobody").await {
        Err(ProviderError::LoginRefused(_)) => {}
        other => panic!("still signed in at the provider: {other:?}"),
    }
}
