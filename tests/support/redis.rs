//! A real `redis-server` per test: on a free loopback port, in a temporary directory, stopped by
//! pid when dropped. Tests that need one fail (never pass silently) when it is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    persistent: bool,
    /// With [`RedisServer::start_tls`]: the TLS port and the certificates.
    pub tls: Option<RedisTls>,
}

/// The TLS side of a test server: its port, the server certificate (self-signed for 127.0.0.1,
/// the CA a gateway trusts), and a client certificate the server accepts.
pub struct RedisTls {
    pub port: u16,
    pub server_cert: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    _certs: tempfile::TempDir,
}

fn free_port() -> u16 {
    // redis-server cannot pick one itself (`--port 0` disables TCP).
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Without persistence (`--save ""`, no AOF).
    pub fn start() -> RedisServer {
        Self::launch(free_port(), tempfile::tempdir().unwrap(), false, &[])
    }

    /// Without persistence, with extra server arguments (e.g. `--requirepass x`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::launch(free_port(), tempfile::tempdir().unwrap(), false, args)
    }

    /// Without persistence, with TLS on a second port (the plain one stays, for
    /// [`RedisServer::command`]); with `client_certs` the TLS port asks for a client
    /// certificate (`tls-auth-clients yes`, Redis's default).
    pub fn start_tls(client_certs: bool) -> RedisServer {
        let certs = tempfile::tempdir().unwrap();
        let file = |n: &str| certs.path().join(n);
        let gen = |cert: &str, key: &str, name: &str| {
            authgate::server::tls::generate_dev_cert(&file(cert), &file(key), &[name.to_string()])
                .unwrap()
        };
        gen("server.pem", "server-key.pem", "127.0.0.1");
        gen("client.pem", "client-key.pem", "authgate-client");
        // The server trusts the client's self-signed certificate as its CA.
        let port = free_port();
        let args = [
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".to_string(),
            file("server.pem").to_str().unwrap().to_string(),
            "--tls-key-file".to_string(),
            file("server-key.pem").to_str().unwrap().to_string(),
            "--tls-ca-cert-file".to_string(),
            file("client.pem").to_str().unwrap().to_string(),
            "--tls-auth-clients".to_string(),
            if client_certs { "yes" } else { "no" }.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut r = Self::launch(free_port(), tempfile::tempdir().unwrap(), false, &args);
        r.tls = Some(RedisTls {
            port,
            server_cert: file("server.pem"),
            client_cert: file("client.pem"),
            client_key: file("client-key.pem"),
            _certs: certs,
        });
        r
    }

    /// `rediss://127.0.0.1:<tls port>/0` (after [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/0",
            self.tls.as_ref().expect("TLS").port
        )
    }

    /// With an append-only file fsynced on every write, so a `kill -9` loses nothing.
    pub fn start_persistent() -> RedisServer {
        Self::launch(free_port(), tempfile::tempdir().unwrap(), true, &[])
    }

    fn launch(port: u16, dir: tempfile::TempDir, persistent: bool, extra: &[&str]) -> RedisServer {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--save", ""])
            .args(["--logfile", ""])
            .args(["--protected-mode", "yes"]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(extra);
        let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start redis-server ({e}): install it with `apt-get install -y redis-server` \
                 (bash .ci/run does this)"
            ),
        };
        // Its own log line says when it accepts connections.
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("redis-server on port {port} did not become ready within 20 s");
        }
        RedisServer {
            child: Some(child),
            port,
            dir,
            persistent,
            tls: None,
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -9`, and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let again = Self::launch(self.port, dir, self.persistent, &[]);
        *self = again;
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Runs one command with redis-cli-free raw RESP and returns the reply line(s).
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        let mut got = Vec::new();
        while start.elapsed() < Duration::from_secs(5) {
            let n = s.read(&mut buf).unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.ends_with(b"\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGCONT first: a stopped server ignores SIGTERM until continued.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `[store]` section for `r`.
pub fn store_section(r: &RedisServer) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"test:\"\n",
        r.url()
    )
}

/// A TCP relay on a free loopback port in front of `target`, whose existing flows can be
/// frozen: they stay open but carry nothing more, either way (a half-open connection, a
/// partition, a NAT that lost its state), while new connections work.
pub struct FreezingRelay {
    pub port: u16,
    flows: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl FreezingRelay {
    pub async fn start(target: u16) -> FreezingRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let flows: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let f2 = flows.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                f2.lock().unwrap().push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to, frozen) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        frozen.clone(),
                    ),
                    (Box::new(sr) as _, Box::new(cw) as _, frozen.clone()),
                ] {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if frozen.load(Ordering::Acquire) {
                                // Hold both ends open and carry nothing, for good.
                                let _keep = (from, to);
                                std::future::pending::<()>().await;
                                return;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezingRelay { port, flows }
    }

    /// Every flow open now stops carrying bytes (new ones are not affected).
    pub fn freeze_existing(&self) {
        for f in self.flows.lock().unwrap().iter() {
            f.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// `redis://127.0.0.1:<relay port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}
