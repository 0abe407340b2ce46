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
        Command::HashPassword => {
            let pw = read_password()?;
            if pw.is_empty() {
                anyhow::bail!("empty password");
            }
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

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            anyhow::bail!("passwords differ");
        }
        Ok(a)
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
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
        .with_writer(std::io::stderr)
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
        wait_for_signals(&gw, &path).await;
        tracing::info!("shutting down");
        gw.shutdown().await;
        Ok::<_, anyhow::Error>(0)
    });
    if let Some(w) = extra {
        w.stop();
    }
    tracing::info!("stopped");
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
                let outcome = tokio::task::spawn_blocking(move || {
                    let config = Config::load(&path).map_err(|e| e.to_string())?;
                    authgate::server::reload(&shared, config).map_err(|e| e.to_string())
                })
                .await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(errors = %e, "reload failed; keeping the old configuration"),
                    Err(e) => tracing::error!(error = %e, "reload task failed; keeping the old configuration"),
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gw: &Gateway, _path: &std::path::Path) {
    let _ = tokio::signal::ctrl_c().await;
}
