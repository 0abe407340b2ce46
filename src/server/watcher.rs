//! Watched configuration: an edit of `gateway.toml` or of `auth.users_file` is applied without
//! SIGHUP.
//!
//! The parent directories are watched, not the files: an editor that writes a new file and
//! renames it over the old one replaces the inode, and a watch on the old inode would see
//! nothing more. Events naming a watched file wake the task; once they have been quiet for
//! [`DEBOUNCE`] it reads the files and, when their bytes differ from those of the last attempt,
//! runs the reload behind SIGHUP ([`super::reload_from_file`]) off the async workers. Then it
//! takes the watched set from the snapshot in force (`users_file` may have moved) and re-arms.
//!
//! notify's callback runs on notify's own thread; it only filters and wakes the task, so nothing
//! here blocks an async worker or grows without bound.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::Shared;

/// Quiet period after the last event before the files are read: one save is several events
/// (write a temporary file, rename it, chmod) within milliseconds, and a copy writes in chunks;
/// 200 ms covers both and is too short for a person to notice.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a reload waits behind events that never go quiet (a file rewritten in a loop).
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// What the watcher has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Reloads that swapped in a new snapshot.
    pub ok: u64,
    /// Reloads that failed (every problem logged); the running snapshot stayed.
    pub failed: u64,
    /// Changes that led to no reload: the bytes were those of the last attempt, or the config
    /// file could not be read (it is loaded once it is back).
    pub skipped: u64,
}

/// A running watch of the configuration files; it ends with the gateway's shutdown or when
/// this handle is dropped.
pub struct Watcher {
    outcomes: watch::Receiver<ReloadCounts>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Watches the files of the snapshot in force until `stop` is set (or its sender is gone).
    /// Fails when the watch cannot be set up (e.g. the inotify limit).
    pub(crate) async fn start(
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Watcher> {
        let wake = Arc::new(Notify::new());
        let (sh, w) = (shared.clone(), wake.clone());
        // Setting up the watch and reading the files block: off the async workers.
        let armed = tokio::task::spawn_blocking(move || {
            let targets: Targets = Arc::default();
            let fs = notify::recommended_watcher(on_event(w, targets.clone())).map_err(io_error)?;
            let mut armed = Armed {
                fs,
                dirs: Vec::new(),
                targets,
                files: watched_files(&sh),
                seen: HashMap::new(),
            };
            armed.arm()?;
            // The bytes the running snapshot came from, as near as can be known: read after
            // the watch is armed, so an edit from here on is seen.
            armed.seen = fingerprint(&armed.files);
            Ok::<_, io::Error>(armed)
        })
        .await
        .map_err(io::Error::other)??;
        let (counts, outcomes) = watch::channel(ReloadCounts::default());
        let task = tokio::spawn(run(armed, shared, wake, stop, counts));
        Ok(Watcher { outcomes, task })
    }

    /// Reload outcomes so far; `changed()` wakes on each one and fails once the watch has ended.
    pub fn outcomes(&self) -> watch::Receiver<ReloadCounts> {
        self.outcomes.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropping the task drops notify's watcher, which ends its thread.
        self.task.abort();
    }
}

/// notify's callback (on notify's thread): wakes the task for events that may concern a target.
fn on_event(
    wake: Arc<Notify>,
    targets: Targets,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |ev| match ev {
        Ok(ev) => {
            let t = targets.read().unwrap_or_else(PoisonError::into_inner);
            if relevant(&ev, &t) {
                wake.notify_one();
            }
        }
        Err(e) => {
            // Lost events (queue overflow) or a broken watch: look at the files anyway.
            tracing::warn!(error = %e, "config watch: event error");
            wake.notify_one();
        }
    }
}

/// Files to react to, as (canonical parent directory, file name); read on notify's thread.
type Targets = Arc<RwLock<Vec<(PathBuf, OsString)>>>;

/// A file's bytes (as a SHA-256) at the last attempt; `None` when it could not be read.
type Seen = HashMap<PathBuf, Option<[u8; 32]>>;

/// The armed watch and what the last attempt saw.
struct Armed {
    fs: notify::RecommendedWatcher,
    /// Directories watched now.
    dirs: Vec<PathBuf>,
    targets: Targets,
    /// The config file first, then the users file, as the snapshot names them.
    files: Vec<PathBuf>,
    seen: Seen,
}

impl Armed {
    /// Watches the parent directories of `files` and no others. Applies what it can and
    /// returns the first failure.
    fn arm(&mut self) -> io::Result<()> {
        let mut first_err = None;
        let mut targets = Vec::new();
        let mut want: Vec<PathBuf> = Vec::new();
        for f in &self.files {
            match locations(f) {
                Ok(found) => {
                    for (dir, name) in found {
                        if !want.contains(&dir) {
                            want.push(dir.clone());
                        }
                        targets.push((dir, name));
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("cannot watch {}: {e}", f.display()),
                    ));
                }
            }
        }
        // Targets first: an event between `watch` and this would be filtered out.
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = targets;
        for d in &self.dirs {
            if !want.contains(d) {
                let _ = self.fs.unwatch(d);
            }
        }
        let mut dirs = Vec::new();
        for d in want {
            if self.dirs.contains(&d) {
                dirs.push(d);
                continue;
            }
            match self.fs.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => dirs.push(d),
                Err(e) => {
                    let e = io_error(e);
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("cannot watch {}: {e}", d.display()),
                    ));
                }
            }
        }
        self.dirs = dirs;
        first_err.map_or(Ok(()), Err)
    }
}

/// What one look at the files led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Reloaded,
    Failed,
    Skipped,
}

async fn run(
    mut armed: Armed,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    counts: watch::Sender<ReloadCounts>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = super::stopped(&mut stop) => return,
        }
        let first = Instant::now();
        loop {
            let quiet = (Instant::now() + DEBOUNCE).min(first + MAX_DELAY);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(quiet) => break,
                _ = super::stopped(&mut stop) => return,
            }
        }
        let sh = shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            let outcome = check_and_reload(&sh, &mut armed);
            (armed, outcome)
        })
        .await;
        let outcome;
        (armed, outcome) = match done {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "config watch stopped: its task failed");
                return;
            }
        };
        counts.send_modify(|c| match outcome {
            Outcome::Reloaded => c.ok += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Skipped => c.skipped += 1,
        });
    }
}

/// Reloads when the files' bytes changed since the last attempt, then re-arms from the snapshot
/// in force (also after no reload: a symlink may have moved on). Blocking.
fn check_and_reload(shared: &Shared, armed: &mut Armed) -> Outcome {
    let outcome = check(shared, armed);
    let files = watched_files(shared);
    if files != armed.files {
        // A newly named file's bytes at this reload are unknown: the next event naming it
        // reloads.
        armed.seen.retain(|p, _| files.contains(p));
        armed.files = files;
    }
    if let Err(e) = armed.arm() {
        tracing::warn!(error = %e, "config watch: some changes will need SIGHUP");
    }
    outcome
}

fn check(shared: &Shared, armed: &mut Armed) -> Outcome {
    let now = fingerprint(&armed.files);
    if now == armed.seen {
        tracing::debug!("config watch: files unchanged, not reloading");
        return Outcome::Skipped;
    }
    let source = armed.files[0].clone();
    if now.get(&source) == Some(&None) {
        // Mid-save (removed before the new one is written) or deleted: nothing to load. Its
        // return counts as a change, even with the same bytes.
        tracing::warn!(file = %source.display(), "config file unreadable or gone; keeping the running configuration until it is back");
        armed.seen = now;
        return Outcome::Skipped;
    }
    armed.seen = now;
    tracing::info!(file = %source.display(), "configuration files changed; reloading");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::reload_from_file(shared, &source)
    }));
    match result {
        Ok(Ok(())) => Outcome::Reloaded,
        // Every problem is already logged.
        Ok(Err(_)) => Outcome::Failed,
        Err(_) => {
            tracing::error!("reload panicked; keeping the old configuration");
            Outcome::Failed
        }
    }
}

/// The config file, the users file and the credentials file (if any) of the snapshot in force.
fn watched_files(shared: &Shared) -> Vec<PathBuf> {
    use crate::config::KeySource;
    let rt = shared.runtime.load();
    let c = &rt.config;
    let mut files = vec![c.source.clone()];
    let mut add = |f: &PathBuf| {
        if !files.contains(f) {
            files.push(f.clone());
        }
    };
    c.users_file.iter().for_each(&mut add);
    c.auth.credentials.iter().for_each(|cc| add(&cc.file));
    // Files the configuration points to whose contents a reload applies: JWT keys (a rotation
    // is a new file in place), a route's upstream CA, a provider's CA.
    if let Some(j) = &c.auth.jwt {
        let keys = std::iter::once(&j.signing_key).chain(j.verify_keys.iter().map(|k| &k.source));
        for k in keys {
            if let KeySource::File(f) = k {
                add(f);
            }
        }
    }
    c.routes
        .iter()
        .filter_map(|r| r.tls_ca.as_ref())
        .for_each(&mut add);
    c.auth
        .oidc
        .iter()
        .filter_map(|o| o.ca_file.as_ref())
        .for_each(&mut add);
    files
}

/// Where events about `file` come from, as (canonical directory, name): the path as written;
/// when it is a symlink, the file it resolves to (an edit there) and the first step of a
/// relative link (Kubernetes swaps the `..data` link beside a mounted ConfigMap's files).
fn locations(file: &Path) -> io::Result<Vec<(PathBuf, OsString)>> {
    let name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent)?;
    let mut out = vec![(dir.clone(), name.to_owned())];
    if let Ok(link) = std::fs::read_link(file) {
        if let Some(Component::Normal(first)) = link.components().next() {
            out.push((dir, first.to_owned()));
        }
        let real = std::fs::canonicalize(file).ok();
        if let Some((d, n)) = real
            .as_ref()
            .and_then(|r| Some((r.parent()?, r.file_name()?)))
        {
            out.push((d.to_path_buf(), n.to_owned()));
        }
    }
    let mut unique = Vec::with_capacity(out.len());
    for l in out {
        if !unique.contains(&l) {
            unique.push(l);
        }
    }
    Ok(unique)
}

/// The current bytes of `files`, hashed.
fn fingerprint(files: &[PathBuf]) -> Seen {
    files
        .iter()
        .map(|f| {
            let digest = std::fs::read(f).ok().map(|b| {
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b);
                let mut out = [0u8; 32];
                out.copy_from_slice(d.as_ref());
                out
            });
            (f.clone(), digest)
        })
        .collect()
}

/// Whether `ev` may have changed one of `targets`. Opening and reading are not changes (the
/// reload itself reads the files); events without paths (a rescan after lost events) may be.
fn relevant(ev: &notify::Event, targets: &[(PathBuf, OsString)]) -> bool {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            targets.iter().any(|(dir, name)| {
                p.file_name() == Some(name.as_os_str()) && p.parent() == Some(dir.as_path())
            })
        })
}

fn io_error(e: notify::Error) -> io::Error {
    match e.kind {
        notify::ErrorKind::Io(e) => e,
        kind => io::Error::other(notify::Error::new(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    fn targets() -> Vec<(PathBuf, OsString)> {
        vec![
            (PathBuf::from("/etc/ag"), OsString::from("gateway.toml")),
            (PathBuf::from("/srv/u"), OsString::from("users.toml")),
        ]
    }

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn relevant_counts_writes_renames_and_removals_of_watched_files() {
        let t = targets();
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(relevant(&ev(kind, "/etc/ag/gateway.toml"), &t), "{kind:?}");
            assert!(relevant(&ev(kind, "/srv/u/users.toml"), &t), "{kind:?}");
        }
    }

    #[test]
    fn relevant_ignores_reads_and_other_files() {
        let t = targets();
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!relevant(&ev(open, "/etc/ag/gateway.toml"), &t));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!relevant(&ev(read, "/etc/ag/gateway.toml"), &t));
        let create = EventKind::Create(CreateKind::File);
        assert!(!relevant(&ev(create, "/etc/ag/gateway.toml.swp"), &t));
        assert!(!relevant(&ev(create, "/etc/ag/users.toml"), &t));
        assert!(!relevant(&ev(create, "/srv/u/gateway.toml"), &t));
    }

    #[test]
    fn relevant_counts_a_rename_over_a_watched_file_and_a_rescan() {
        let t = targets();
        let both = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(PathBuf::from("/etc/ag/.gateway.toml.tmp"))
            .add_path(PathBuf::from("/etc/ag/gateway.toml"));
        assert!(relevant(&both, &t));
        assert!(relevant(&notify::Event::new(EventKind::Other), &t));
    }

    #[test]
    fn fingerprint_tells_missing_from_present_and_bytes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        let files = vec![f.clone()];
        assert_eq!(fingerprint(&files)[&f], None);
        std::fs::write(&f, "x = 1\n").unwrap();
        let one = fingerprint(&files);
        assert!(one[&f].is_some());
        std::fs::write(&f, "x = 1\n").unwrap();
        assert_eq!(fingerprint(&files), one);
        std::fs::write(&f, "x = 2\n").unwrap();
        assert_ne!(fingerprint(&files), one);
    }

    #[test]
    fn locations_of_a_bare_file_name_is_the_current_directory() {
        let found = locations(Path::new("gateway.toml")).unwrap();
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(found, vec![(cwd, OsString::from("gateway.toml"))]);
    }

    #[cfg(unix)]
    #[test]
    fn locations_of_a_symlink_add_its_first_step_and_its_target() {
        // The layout of a mounted Kubernetes ConfigMap.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/gateway.toml"), "").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gateway.toml", d.join("gateway.toml")).unwrap();
        let found = locations(&d.join("gateway.toml")).unwrap();
        assert_eq!(
            found,
            vec![
                (d.clone(), OsString::from("gateway.toml")),
                (d.clone(), OsString::from("..data")),
                (d.join("..v1"), OsString::from("gateway.toml")),
            ]
        );
    }
}
