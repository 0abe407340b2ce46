//! The `authgate` binary: command line, logging set-up, signals. Errors become a message and exit 1.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use authgate::config::{Config, JwtAlgorithm, LogFormat, RuntimeFlavor};
use authgate::server::WorkerRuntimes;
use authgate::Gateway;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse-proxy authentication gateway.
#[derive(Parser)]
#[command(name = "authgate", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and list every problem; exit 0 if valid, 1 if not.
    CheckConfig,
    /// Read a password (from the terminal without echo, or stdin) and print its argon2id hash.
    HashPassword,
    /// Write a self-signed DEVELOPMENT certificate and key (never use them in production).
    GenCert {
        /// Certificate output path.
        #[arg(long, default_value = "certs/dev-localhost-cert.pem")]
        cert: PathBuf,
        /// Private key output path.
        #[arg(long, default_value = "certs/dev-localhost-key.pem")]
        key: PathBuf,
        /// Subject alternative names.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
    },
    /// Show which route and rule decide a request, and the outcome (the proxy's own decision).
    Explain {
        /// The request URL, e.g. https://app.example.com/admin/x.
        url: String,
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A configured user (absent: a request without a login).
        #[arg(long)]
        user: Option<String>,
        /// The client address, as resolved through trusted_proxies.
        #[arg(long, default_value = "127.0.0.1")]
        from: std::net::IpAddr,
        /// Explain a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method;
        /// implies --method OPTIONS).
        #[arg(long)]
        preflight: bool,
        /// How the user logged in: pwd (a password) or pwd,otp (and a second factor).
        #[arg(long, default_value = "pwd")]
        factors: String,
    },
    /// Second factors (TOTP) in `[auth] credentials_file`.
    Totp {
        #[command(subcommand)]
        action: TotpAction,
    },
    /// Generate a JWT signing key: PEM private + public key, or an HS256 secret.
    GenJwtKey {
        /// EdDSA, ES256, RS256 or HS256.
        #[arg(long, default_value = "EdDSA")]
        alg: String,
        /// Output path prefix (files: PREFIX.pem and PREFIX.pub.pem, or PREFIX.secret).
        #[arg(long, default_value = "certs/jwt-key")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TotpAction {
    /// Enrol a user: prints the otpauth:// URI, a QR code and ten recovery codes (shown once).
    Enroll {
        /// A configured user.
        #[arg(long)]
        user: String,
        /// Replace an existing enrolment (the old device and codes stop working).
        #[arg(long)]
        replace: bool,
    },
    /// Print a single-use link with which the user enrols their own device, after their password.
    Invite {
        /// A configured user.
        #[arg(long)]
        user: String,
        /// How long the link works.
        #[arg(long, default_value = "24h")]
        valid: String,
        /// Let the link replace a second factor the user already has (a new device).
        #[arg(long)]
        replace: bool,
    },
    /// Remove a user's second factor (a lost device): they log in with the password alone.
    Remove {
        /// The user.
        #[arg(long)]
        user: String,
    },
}

fn totp(config: &std::path::Path, action: TotpAction) -> anyhow::Result<i32> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            return Ok(2);
        }
    };
    let Some(cc) = cfg.auth.credentials.clone() else {
        anyhow::bail!(
            "{}: [auth] credentials_file and credentials_key_file (or credentials_key_env) are needed for second factors",
            config.display()
        );
    };
    match action {
        TotpAction::Enroll { user, replace } => {
            if !cfg.users.iter().any(|u| u.username == user) {
                anyhow::bail!("no user {user:?} in {}", config.display());
            }
            let e = authgate::auth::credentials::enroll(&cc, &user, replace)
                .map_err(anyhow::Error::msg)?;
            println!("Second factor for {user} written to {}.", cc.file.display());
            println!("Scan this with an authenticator app, or enter the key by hand:\n");
            println!(
                "{}",
                authgate::auth::credentials::qr_terminal(&e.uri).map_err(anyhow::Error::msg)?
            );
            println!("otpauth URI: {}", e.uri);
            println!("key (base32): {}\n", e.secret_base32);
            println!("Recovery codes (each works once; shown only now, store them safely):");
            for c in &e.recovery_codes {
                println!("  {c}");
            }
            println!("\nA running gateway applies this when it reloads its configuration (by itself when it watches files, or on SIGHUP).");
            Ok(0)
        }
        TotpAction::Invite {
            user,
            valid,
            replace,
        } => {
            if !cfg.users.iter().any(|u| u.username == user) {
                anyhow::bail!("no user {user:?} in {}", config.display());
            }
            let valid = humantime::parse_duration(&valid)
                .map_err(|e| anyhow::anyhow!("--valid {valid:?}: {e}"))?;
            let token = authgate::auth::credentials::invite(&cc, &user, valid, replace)
                .map_err(anyhow::Error::msg)?;
            println!(
                "Enrolment link for {user} (single use, valid {}):",
                humantime::format_duration(valid)
            );
            println!("{}/.auth/totp/enroll?t={token}", cfg.server.public_origin);
            println!(
                "Send it to {user} over a channel you trust; it works only with their password."
            );
            Ok(0)
        }
        TotpAction::Remove { user } => {
            if authgate::auth::credentials::remove(&cc, &user).map_err(anyhow::Error::msg)? {
                println!(
                    "Removed the second factor of {user}: they now log in with the password alone."
                );
                Ok(0)
            } else {
                println!("{user} had no second factor.");
                Ok(1)
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("authgate: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(cli.config),
        Command::CheckConfig => {
            authgate::server::tls::install_crypto_provider();
            match Config::load(&cli.config).and_then(authgate::state::Runtime::build) {
                Ok(rt) => {
                    println!(
                        "{}: ok ({} routes, {} users)",
                        cli.config.display(),
                        rt.router.routes().len(),
                        rt.users.len()
                    );
                    Ok(0)
                }
                Err(errs) => {
                    for e in &errs.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("{} problem(s) found", errs.0.len());
                    Ok(1)
                }
            }
        }
        Command::Explain {
            url,
            method,
            user,
            from,
            preflight,
            factors,
        } => {
            authgate::server::tls::install_crypto_provider();
            let rt = match Config::load(&cli.config).and_then(authgate::state::Runtime::build) {
                Ok(rt) => rt,
                Err(errs) => {
                    for e in &errs.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("{} problem(s) found", errs.0.len());
                    return Ok(2);
                }
            };
            // A preflight is an OPTIONS request by definition.
            let method = if preflight {
                "OPTIONS".to_string()
            } else {
                method
            };
            let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("{method:?} is not a method"))?;
            let q = authgate::policy::explain::Question {
                method,
                url,
                user,
                from,
                preflight,
                factors: authgate::auth::factors::parse(factors.split(',').map(str::trim)),
            };
            print!(
                "{}",
                authgate::policy::explain::explain(&rt, &q).map_err(anyhow::Error::msg)?
            );
            Ok(0)
        }
        Command::Totp { action } => totp(&cli.config, action),
        Command::HashPassword => {
            let pw = read_password()?;
            println!(
                "{}",
                authgate::auth::password::hash(pw.as_bytes()).map_err(anyhow::Error::msg)?
            );
            Ok(0)
        }
        Command::GenCert { cert, key, names } => {
            authgate::server::tls::install_crypto_provider();
            authgate::server::tls::generate_dev_cert(&cert, &key, &names)
                .map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} and {} (development only)",
                cert.display(),
                key.display()
            );
            Ok(0)
        }
        Command::GenJwtKey { alg, out } => {
            let alg = JwtAlgorithm::parse(&alg).with_context(|| {
                format!("unknown algorithm {alg:?} (EdDSA, ES256, RS256, HS256)")
            })?;
            let files = authgate::auth::jwt::generate_key(alg, &out).map_err(anyhow::Error::msg)?;
            for f in files {
                println!("wrote {}", f.display());
            }
            Ok(0)
        }
    }
}

/// Bound on piped input: two copies of the longest password plus line ends fit easily; anything
/// longer is a file piped by mistake, not a password.
const MAX_PASSWORD_INPUT: usize = 4096;
/// `POST /.auth/login` refuses longer passwords, so a longer one could never be used to log in.
const MAX_PASSWORD_BYTES: usize = 1024;

/// Why `hash-password` refused its input. Never shows the password itself.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum PasswordInputError {
    #[error("input is longer than {MAX_PASSWORD_INPUT} bytes: not a password")]
    InputTooLong,
    #[error("input is not valid UTF-8")]
    NotUtf8,
    #[error("empty password")]
    Empty,
    #[error("the password contains a control character ({0}); tabs, carriage returns and other control characters cannot be typed into the login form")]
    ControlCharacter(String),
    #[error(
        "the password is longer than {MAX_PASSWORD_BYTES} bytes, which the login form refuses"
    )]
    TooLong,
    #[error("the two lines differ (pipe the password once, or the same password twice)")]
    LinesDiffer,
    #[error(
        "{0} lines of input: expected the password on one line, or the same password on two lines"
    )]
    TooManyLines(usize),
}

/// The password in piped input: one line, or the same line twice (as typed at the prompt).
/// Lines end in `\n` or `\r\n`; the last line end is optional.
fn password_from_input(input: &[u8]) -> Result<String, PasswordInputError> {
    if input.len() > MAX_PASSWORD_INPUT {
        return Err(PasswordInputError::InputTooLong);
    }
    let text = std::str::from_utf8(input).map_err(|_| PasswordInputError::NotUtf8)?;
    // A `\r` counts as part of a line end only right before a `\n`; anywhere else it is refused.
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .map(|l| {
            l.strip_suffix('\n')
                .map_or(l, |l| l.strip_suffix('\r').unwrap_or(l))
        })
        .collect();
    match lines[..] {
        [] => Err(PasswordInputError::Empty),
        [one] => check_password(one),
        [first, second] => {
            check_password(first)?;
            if first != second {
                return Err(PasswordInputError::LinesDiffer);
            }
            Ok(first.to_string())
        }
        _ => Err(PasswordInputError::TooManyLines(lines.len())),
    }
}

/// A password the login form can send: not empty, no control characters, not too long.
fn check_password(pw: &str) -> Result<String, PasswordInputError> {
    if pw.is_empty() {
        return Err(PasswordInputError::Empty);
    }
    if let Some(c) = pw.chars().find(|c| c.is_control()) {
        let name = match c {
            '\t' => "a tab".to_string(),
            '\r' => "a carriage return".to_string(),
            c => format!("U+{:04X}", c as u32),
        };
        return Err(PasswordInputError::ControlCharacter(name));
    }
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordInputError::TooLong);
    }
    Ok(pw.to_string())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            anyhow::bail!("passwords differ");
        }
        Ok(check_password(&a)?)
    } else {
        let mut input = Vec::new();
        std::io::stdin()
            .take(MAX_PASSWORD_INPUT as u64 + 1)
            .read_to_end(&mut input)
            .context("reading the password from stdin")?;
        Ok(password_from_input(&input)?)
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let format = match std::env::var("AUTHGATE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => format,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Through the log queue: a slow stderr consumer never stalls a worker.
        .with_writer(authgate::telemetry::sink::StderrWriter)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

fn serve(path: PathBuf) -> anyhow::Result<i32> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            return Ok(1);
        }
    };
    init_logging(config.log.format);
    // Thread per core (the default): this thread and `workers - 1` more each run a
    // single-threaded runtime; connections are dealt out round robin and stay where they land.
    // Work stealing: one multi-threaded runtime.
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let per_core = workers == 1 || config.server.runtime == RuntimeFlavor::ThreadPerCore;
    let rt = if per_core {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let extra = if per_core && workers > 1 {
        Some(WorkerRuntimes::spawn(workers - 1)?)
    } else {
        None
    };
    let handles = extra.as_ref().map_or_else(Vec::new, |w| w.handles());
    let result = rt.block_on(async move {
        let gw = Gateway::start_with_workers(config, handles).await?;
        {
            let snap = gw.shared().runtime.load();
            if snap.users.has_demo() {
                tracing::warn!("DEMO USER ENABLED: anyone who reads the README can sign in. Remove `demo = true` users before exposing this gateway.");
            }
            if !snap.config.server.https {
                tracing::warn!("public_url is http: cookies are not marked Secure. Use https outside loopback.");
            }
        }
        // Ends with the shutdown; SIGHUP works with or without it.
        let _watch = if gw.shared().runtime.load().config.server.watch_config {
            gw.watch_config()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP"))
                .ok()
        } else {
            None
        };
        wait_for_signals(&gw, &path).await;
        tracing::info!("shutting down");
        gw.shutdown().await;
        Ok::<_, anyhow::Error>(0)
    });
    if let Some(w) = extra {
        w.stop();
    }
    tracing::info!("stopped");
    authgate::telemetry::sink::stderr().flush(std::time::Duration::from_secs(2));
    result
}

#[cfg(unix)]
async fn wait_for_signals(gw: &Gateway, path: &std::path::Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                // Reading files and building the snapshot (key parsing, a password hash) takes a
                // while: off this thread, which also accepts and serves connections.
                let (shared, path) = (gw.shared().clone(), path.to_owned());
                // logrotate's postrotate sends SIGHUP: write audit events to the new file.
                shared.runtime.load().telemetry.reopen_files();
                let outcome = tokio::task::spawn_blocking(move || {
                    // Errors are logged inside, one line each.
                    let _ = authgate::server::reload_from_file(&shared, &path);
                })
                .await;
                if let Err(e) = outcome {
                    tracing::error!(error = %e, "reload task failed; keeping the old configuration");
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gw: &Gateway, _path: &std::path::Path) {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use PasswordInputError as E;

    #[test]
    fn password_input_one_line_with_or_without_line_end() {
        for input in ["pw", "pw\n", "pw\r\n"] {
            assert_eq!(
                password_from_input(input.as_bytes()),
                Ok("pw".into()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn password_input_two_equal_lines_give_the_first() {
        for input in ["pw\npw", "pw\npw\n", "pw\r\npw\r\n", "pw\npw\r\n"] {
            assert_eq!(
                password_from_input(input.as_bytes()),
                Ok("pw".into()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn password_input_keeps_spaces_and_non_ascii() {
        assert_eq!(
            password_from_input(" corrèct horse \n corrèct horse \n".as_bytes()),
            Ok(" corrèct horse ".into())
        );
    }

    #[test]
    fn password_input_two_different_lines_are_refused() {
        assert_eq!(password_from_input(b"pw\npx\n"), Err(E::LinesDiffer));
        assert_eq!(password_from_input(b"pw\npw \n"), Err(E::LinesDiffer));
    }

    #[test]
    fn password_input_more_than_two_lines_is_refused() {
        assert_eq!(
            password_from_input(b"pw\npw\npw\n"),
            Err(E::TooManyLines(3))
        );
        assert_eq!(password_from_input(b"pw\npw\n\n"), Err(E::TooManyLines(3)));
    }

    #[test]
    fn password_input_empty_is_refused() {
        for input in ["", "\n", "\r\n", "\n\n", "\npw\n"] {
            assert_eq!(
                password_from_input(input.as_bytes()),
                Err(E::Empty),
                "{input:?}"
            );
        }
    }

    #[test]
    fn password_input_control_characters_are_refused() {
        for input in [
            "p\tw\n", "p\rw\n", "pw\r", "pw\r\r\n", "p\x1bw", "p\u{7f}w", "p\u{85}w",
        ] {
            assert!(
                matches!(
                    password_from_input(input.as_bytes()),
                    Err(E::ControlCharacter(_))
                ),
                "{input:?}"
            );
        }
    }

    #[test]
    fn password_input_invalid_utf8_is_refused() {
        assert_eq!(password_from_input(b"p\xffw\n"), Err(E::NotUtf8));
    }

    #[test]
    fn password_input_length_is_bounded() {
        let long = "a".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(password_from_input(long.as_bytes()), Err(E::TooLong));
        let max = "a".repeat(MAX_PASSWORD_BYTES);
        assert_eq!(
            password_from_input(format!("{max}\r\n{max}\r\n").as_bytes()),
            Ok(max)
        );
        let huge = vec![b'a'; MAX_PASSWORD_INPUT + 1];
        assert_eq!(password_from_input(&huge), Err(E::InputTooLong));
    }
}
