//! A real OpenID Provider per test: panva's certified `oidc-provider` (npm) run by Node on a free
//! loopback port (`tests/oidc/provider.mjs`), and a browser without JavaScript that signs in at
//! it over plain HTTP. Tests that need it fail (never pass silently) when Node or the npm package
//! is not installed.
//!
//! Accounts (any password): `alice` (Alice Example, alice@example.com, verified, groups staff and
//! admins), `bob` (bob@example.com, verified, staff), `carol` (carol@example.org, *not* verified,
//! guests). Any other login name is refused. Scopes: openid, profile (preferred_username, name),
//! email (email, email_verified), groups (groups). PKCE (S256) is required of every client; the
//! authorization response carries `iss`; RP-initiated logout is on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// How long the provider may take to say it listens (Node starts in well under a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Most steps (requests) one walk through the provider's pages may take.
const MAX_STEPS: usize = 20;

/// A client registered at the provider.
#[derive(Debug, Clone, Default)]
pub struct TestClient {
    pub client_id: String,
    /// `None`: a public client (`token_endpoint_auth_method` "none"); otherwise it authenticates
    /// with `client_secret_basic`.
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
}

impl TestClient {
    /// A confidential client (`client_secret_basic`) with one redirect URI.
    pub fn confidential(client_id: &str, client_secret: &str, redirect_uri: &str) -> TestClient {
        TestClient {
            client_id: client_id.to_string(),
            client_secret: Some(client_secret.to_string()),
            redirect_uris: vec![redirect_uri.to_string()],
            post_logout_redirect_uris: Vec::new(),
        }
    }

    /// A public client (no secret, PKCE only) with one redirect URI.
    pub fn public(client_id: &str, redirect_uri: &str) -> TestClient {
        TestClient {
            client_id: client_id.to_string(),
            client_secret: None,
            redirect_uris: vec![redirect_uri.to_string()],
            post_logout_redirect_uris: Vec::new(),
        }
    }

    /// The same client, also allowed to come back to `uri` after RP-initiated logout.
    pub fn with_post_logout_redirect_uri(mut self, uri: &str) -> TestClient {
        self.post_logout_redirect_uris.push(uri.to_string());
        self
    }
}

/// A running provider; killed when dropped (and it exits by itself when its stdin closes, so a
/// test process that dies leaves none behind).
pub struct OidcProvider {
    /// `http://127.0.0.1:<port>`, exactly as the provider spells it in discovery and tokens.
    pub issuer: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

fn install_hint() -> &'static str {
    "install Node and the provider with `apt-get install -y nodejs npm` and \
     `npm ci --prefix tests/oidc` (`bash .ci/deps` does both)"
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl OidcProvider {
    /// Starts a provider with these clients. `id_token_claims`: the profile, email and groups
    /// claims also go into the ID token (`conformIdTokenClaims: false`); otherwise (the default
    /// of oidc-provider) the ID token carries only `sub` and protocol claims, and the rest comes
    /// from userinfo.
    pub async fn start(clients: &[TestClient], id_token_claims: bool) -> OidcProvider {
        let dir = script_dir();
        match std::process::Command::new("node")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("`node --version` failed ({s}): {}", install_hint()),
            Err(e) => panic!("cannot run `node` ({e}): {}", install_hint()),
        }
        let pkg = dir.join("node_modules/oidc-provider/package.json");
        assert!(
            pkg.is_file(),
            "{} is missing: {}",
            pkg.display(),
            install_hint()
        );

        let tmp = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "clients": clients.iter().map(|c| {
                let mut v = serde_json::json!({
                    "client_id": c.client_id,
                    "redirect_uris": c.redirect_uris,
                    "post_logout_redirect_uris": c.post_logout_redirect_uris,
                });
                if let Some(s) = &c.client_secret {
                    v["client_secret"] = s.clone().into();
                }
                v
            }).collect::<Vec<_>>(),
            "id_token_claims": id_token_claims,
        });
        let config_path = tmp.path().join("provider.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node ({e}): {}", install_hint()));

        // Its stderr (warnings, errors) is kept for the failure messages.
        let stderr: Arc<Mutex<String>> = Arc::default();
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        let err_task = tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });

        let mut out_lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut unexpected = Vec::new();
        let waited = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match out_lines.next_line().await {
                    Ok(Some(line)) => match line.strip_prefix("LISTENING ") {
                        Some(issuer) => return Some(issuer.trim().to_string()),
                        None => unexpected.push(line),
                    },
                    _ => return None,
                }
            }
        })
        .await;
        let issuer = match waited {
            Ok(Some(issuer)) => issuer,
            other => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), err_task).await;
                let why = match other {
                    Err(_) => format!("did not print LISTENING within {START_TIMEOUT:?}"),
                    _ => "exited before printing LISTENING".to_string(),
                };
                panic!(
                    "the OpenID Provider (node tests/oidc/provider.mjs) {why}; stdout: {unexpected:?}\n\
                     stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        // Nothing else is expected on stdout; drain it anyway so the provider never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = out_lines.next_line().await {} });

        OidcProvider {
            issuer,
            stdin: child.stdin.take(),
            child,
            stderr,
            _dir: tmp,
        }
    }

    /// `{issuer}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// What the provider printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `/.well-known/openid-configuration`.
    pub async fn discovery(&self) -> serde_json::Value {
        let r = provider_browser()
            .get(self.url("/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "discovery failed");
        r.json().await.unwrap()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- OpenID Provider stderr ({}) ---\n{}",
                self.issuer,
                self.stderr.lock().unwrap()
            );
        }
        // Closing stdin makes it exit by itself; the kill is for certainty.
        self.stdin.take();
        let _ = self.child.start_kill();
    }
}

/// A PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce_pair() -> (String, String) {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut raw).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = b64.encode(raw);
    let challenge = b64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

/// A fresh random URL-safe token (for `state` and `nonce`).
pub fn random_token() -> String {
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut raw).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A client like a browser's at the provider: its own cookie jar (the provider's session and
/// interaction cookies), no automatic redirects (the walks follow them by hand and stop at the
/// first one that leaves the provider).
pub fn provider_browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Signs `login` in at the provider with a fresh browser (no provider session yet), starting at
/// `authorize_url` (where the gateway's redirect points), through the login and consent forms;
/// returns the first Location that leaves the provider: the callback URL with `code`, `state`
/// and `iss` (or with `error` when the provider refuses the request). Panics when the provider
/// refuses the login or shows an unexpected page. `_client` is the test's own client, not used:
/// the provider's cookies live in a browser made here. See [`sign_in_with`] to keep a provider
/// session across sign-ins.
pub async fn sign_in_at_provider(
    _client: &reqwest::Client,
    authorize_url: &str,
    login: &str,
) -> String {
    sign_in_with(&provider_browser(), authorize_url, login).await
}

/// [`sign_in_at_provider`] in `browser` (from [`provider_browser`]): when the browser already
/// has a provider session with consent for the client, the provider redirects back at once.
pub async fn sign_in_with(browser: &reqwest::Client, authorize_url: &str, login: &str) -> String {
    match try_sign_in_with(browser, authorize_url, login).await {
        Ok(location) => location,
        Err(e) => panic!("sign-in of {login:?} at the provider failed: {e}"),
    }
}

/// Why a walk through the provider's pages did not leave it.
#[derive(Debug)]
pub enum ProviderError {
    /// The login form came back after submitting `login` (unknown login name); the page's
    /// error text.
    LoginRefused(String),
    /// A page the walk does not know what to do with (an error page, a 4xx/5xx).
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
    /// More than [`MAX_STEPS`] requests.
    TooManySteps,
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::LoginRefused(e) => write!(f, "login refused: {e}"),
            ProviderError::Unexpected { url, status, body } => {
                write!(f, "unexpected page {url} ({status}):\n{body}")
            }
            ProviderError::TooManySteps => write!(f, "more than {MAX_STEPS} requests"),
        }
    }
}

/// [`sign_in_with`] that reports a refused login (or an unexpected page) instead of panicking.
pub async fn try_sign_in_with(
    browser: &reqwest::Client,
    authorize_url: &str,
    login: &str,
) -> Result<String, ProviderError> {
    let origin = url::Url::parse(authorize_url).unwrap().origin();
    let mut next = Next::Get(authorize_url.to_string());
    let mut logged_in = false;
    for _ in 0..MAX_STEPS {
        let page = match step(browser, &origin, next).await? {
            Step::Left(location) => return Ok(location),
            Step::Redirect(url) => {
                next = Next::Get(url);
                continue;
            }
            Step::Page(page) => page,
        };
        let forms = parse_forms(&page.body);
        let prompt = |name: &str| {
            forms
                .iter()
                .find(|f| f.field("prompt") == Some(name))
                .cloned()
        };
        if let (200, Some(form)) = (page.status, prompt("login")) {
            if logged_in {
                return Err(ProviderError::LoginRefused(text_of(&page.body, "error")));
            }
            logged_in = true;
            let mut fields = form.hidden();
            fields.push(("login".into(), login.into()));
            fields.push(("password".into(), "any password".into()));
            next = Next::Post(page.resolve(&form.action), fields);
        } else if let (200, Some(form)) = (page.status, prompt("consent")) {
            next = Next::Post(page.resolve(&form.action), form.hidden());
        } else {
            return Err(page.unexpected());
        }
    }
    Err(ProviderError::TooManySteps)
}

/// Starts a sign-in at `authorize_url` in a fresh browser and presses Cancel on the provider's
/// login form; returns the Location back to the client (with `error=access_denied`).
pub async fn cancel_at_provider(authorize_url: &str) -> String {
    let browser = provider_browser();
    let origin = url::Url::parse(authorize_url).unwrap().origin();
    let mut next = Next::Get(authorize_url.to_string());
    let mut cancelled = false;
    for _ in 0..MAX_STEPS {
        let page = match step(&browser, &origin, next).await {
            Ok(Step::Left(location)) => return location,
            Ok(Step::Redirect(url)) => {
                next = Next::Get(url);
                continue;
            }
            Ok(Step::Page(page)) => page,
            Err(e) => panic!("cancel at the provider failed: {e}"),
        };
        let abort = links(&page.body)
            .into_iter()
            .find(|l| l.ends_with("/abort"));
        match abort {
            Some(href) if page.status == 200 && !cancelled => {
                cancelled = true;
                next = Next::Get(page.resolve(&href));
            }
            _ => panic!("cancel at the provider failed: {}", page.unexpected()),
        }
    }
    panic!("cancel at the provider: more than {MAX_STEPS} requests")
}

/// RP-initiated logout in `browser` (the one that signed in): opens `end_session_url` (the
/// provider's `end_session_endpoint` with `id_token_hint`, `post_logout_redirect_uri`, `state`,
/// as the gateway sends the user there), answers "Yes, sign me out", and returns the first
/// Location that leaves the provider (the `post_logout_redirect_uri` with `state`), or the URL of
/// the provider's own "Sign-out Success" page when there is no redirect back.
pub async fn sign_out_with(browser: &reqwest::Client, end_session_url: &str) -> String {
    let origin = url::Url::parse(end_session_url).unwrap().origin();
    let mut next = Next::Get(end_session_url.to_string());
    let mut confirmed = false;
    for _ in 0..MAX_STEPS {
        let page = match step(browser, &origin, next).await {
            Ok(Step::Left(location)) => return location,
            Ok(Step::Redirect(url)) => {
                next = Next::Get(url);
                continue;
            }
            Ok(Step::Page(page)) => page,
            Err(e) => panic!("sign-out at the provider failed: {e}"),
        };
        let forms = parse_forms(&page.body);
        let form = forms.iter().find(|f| f.field("xsrf").is_some());
        match form {
            Some(form) if page.status == 200 && !confirmed => {
                confirmed = true;
                let mut fields = form.hidden();
                fields.push(("logout".into(), "yes".into()));
                next = Next::Post(page.resolve(&form.action), fields);
            }
            None if page.status == 200 && confirmed && page.body.contains("Sign-out Success") => {
                return page.url;
            }
            _ => panic!("sign-out at the provider failed: {}", page.unexpected()),
        }
    }
    panic!("sign-out at the provider: more than {MAX_STEPS} requests")
}

enum Next {
    Get(String),
    Post(String, Vec<(String, String)>),
}

enum Step {
    /// A redirect out of the provider's origin: its absolute Location.
    Left(String),
    /// A redirect within the provider.
    Redirect(String),
    Page(Page),
}

struct Page {
    url: String,
    status: u16,
    body: String,
}

impl Page {
    fn resolve(&self, href: &str) -> String {
        url::Url::parse(&self.url)
            .unwrap()
            .join(href)
            .unwrap()
            .to_string()
    }

    fn unexpected(&self) -> ProviderError {
        ProviderError::Unexpected {
            url: self.url.clone(),
            status: self.status,
            body: self.body.clone(),
        }
    }
}

/// One request in `browser`: a redirect (inside or out of `origin`) or a page.
async fn step(
    browser: &reqwest::Client,
    origin: &url::Origin,
    next: Next,
) -> Result<Step, ProviderError> {
    let (url, req) = match next {
        Next::Get(url) => (url.clone(), browser.get(&url)),
        Next::Post(url, fields) => (url.clone(), browser.post(&url).form(&fields)),
    };
    let r = req
        .header("accept", "text/html")
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to the provider ({url}) failed: {e}"));
    let status = r.status().as_u16();
    if r.status().is_redirection() {
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("redirect {status} from {url} without a Location"));
        let to = url::Url::parse(&url).unwrap().join(location).unwrap();
        return Ok(if to.origin() == *origin {
            Step::Redirect(to.to_string())
        } else {
            Step::Left(to.to_string())
        });
    }
    let body = r.text().await.unwrap_or_default();
    Ok(Step::Page(Page { url, status, body }))
}

/// A `<form>` of a page: its action and its `<input>`s (type, name, value).
#[derive(Debug, Clone)]
struct Form {
    action: String,
    inputs: Vec<(String, String, String)>,
}

impl Form {
    fn field(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// The hidden inputs as form fields.
    fn hidden(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter(|(t, _, _)| t.eq_ignore_ascii_case("hidden"))
            .map(|(_, n, v)| (n.clone(), v.clone()))
            .collect()
    }
}

/// The tags named `name` (lower case) in `html`, each as its attributes (names lower-cased,
/// values entity-decoded), with the byte offset just past the tag.
fn tags(html: &str, name: &str) -> Vec<(usize, Vec<(String, String)>)> {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find(&open) {
        let start = at + i + open.len();
        at = start;
        // `<formx` is another tag.
        if !lower[start..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/') {
            continue;
        }
        let (attrs, end) = attributes(html, start);
        out.push((end, attrs));
        at = end;
    }
    out
}

/// Parses attributes from `start` up to the closing `>`: returns them and the offset past it.
fn attributes(html: &str, start: usize) -> (Vec<(String, String)>, usize) {
    let b = html.as_bytes();
    let mut i = start;
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return (attrs, i);
        }
        if b[i] == b'>' {
            return (attrs, i + 1);
        }
        let n0 = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = html[n0..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let v0 = i + 1;
                i = v0;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = html[v0..i].to_string();
                i = (i + 1).min(b.len());
            } else {
                let v0 = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
                value = html[v0..i].to_string();
            }
        }
        if !name.is_empty() {
            attrs.push((name, html_escape::decode_html_entities(&value).into_owned()));
        }
    }
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The forms of a page with the inputs inside each (up to its `</form>`).
fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    tags(html, "form")
        .into_iter()
        .map(|(end, attrs)| {
            let close = lower[end..]
                .find("</form")
                .map(|i| end + i)
                .unwrap_or(html.len());
            let inner = &html[end..close];
            let inputs = tags(inner, "input")
                .into_iter()
                .filter_map(|(_, a)| {
                    let name = attr(&a, "name")?.to_string();
                    let ty = attr(&a, "type").unwrap_or("text").to_string();
                    let value = attr(&a, "value").unwrap_or("").to_string();
                    Some((ty, name, value))
                })
                .collect();
            Form {
                action: attr(&attrs, "action").unwrap_or("").to_string(),
                inputs,
            }
        })
        .collect()
}

/// The `href`s of a page's links.
fn links(html: &str) -> Vec<String> {
    tags(html, "a")
        .into_iter()
        .filter_map(|(_, a)| attr(&a, "href").map(str::to_string))
        .collect()
}

/// The text of the first element with `class="{class}"` (for error messages), or "" if none.
fn text_of(html: &str, class: &str) -> String {
    let needle = format!("class=\"{class}\"");
    let Some(i) = html.find(&needle) else {
        return String::new();
    };
    let Some(gt) = html[i..].find('>') else {
        return String::new();
    };
    let rest = &html[i + gt + 1..];
    let end = rest.find('<').unwrap_or(rest.len());
    html_escape::decode_html_entities(rest[..end].trim()).into_owned()
}
