//! The credential cache behind `keyward creds`.
//!
//! Why it exists: subject tokens are single-use, and clients run `credential_process` again
//! whenever they start or their credentials near expiry (boto3 does so on every call in its last
//! 15 minutes). Without a cache the second run re-sends a spent token and is refused as a replay;
//! with it, what one exchange obtained is handed out again until it nears expiry.
//!
//! On disk: `$XDG_CACHE_HOME/keyward/creds/` (else `~/.cache/keyward/creds/`), a directory of
//! mode 0700 owned by the user, one 0600 file per [`Key`]. The defences, in the order they apply:
//! - the directory must be a real directory owned by the user; group or other access is removed;
//! - one lock file serializes invocations, so two clients starting at once do not both exchange
//!   (the second would be refused as a replay of a fixed token);
//! - every open refuses symlinks (`O_NOFOLLOW`); an entry that is not a regular file owned by the
//!   user with no group or other access is ignored (and replaced by the next write);
//! - an entry that does not parse is a miss, never an error;
//! - writes go to a fresh temporary file (`O_CREAT|O_EXCL`, 0600) renamed into place, so a
//!   reader sees the old entry or the new one, never half of one.
//!
//! Entries hold the credentials and their expiry, never the subject token.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

/// Entries larger than this are not ours: a miss.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// Bumped when [`Entry`] changes shape; older entries are then misses.
const ENTRY_VERSION: u32 = 1;

/// Why the cache cannot be used. The caller says so on stderr and carries on without it.
#[derive(Debug, thiserror::Error)]
pub(super) enum CacheError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` names a directory.
    #[error("neither XDG_CACHE_HOME nor HOME is set")]
    NoHome,
    /// Creating or inspecting the cache directory failed.
    #[error("cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The cache directory is a symlink, not a directory, or someone else's.
    #[error("cache directory {path} {why}; not using it")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Taking the lock failed.
    #[error("cache lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Writing an entry failed.
    #[error("cannot write cache entry {path}: {source}")]
    Write {
        /// The entry or its temporary file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// An entry could not be encoded.
    #[error("cannot encode a cache entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The cache directory a user's invocations share: `$XDG_CACHE_HOME/keyward/creds` (an absolute
/// `XDG_CACHE_HOME` only, as the XDG specification says), else `$HOME/.cache/keyward/creds`.
pub(super) fn default_dir(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, CacheError> {
    if let Some(xdg) = env("XDG_CACHE_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(Path::new(&xdg).join("keyward").join("creds"));
    }
    match env("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(Path::new(&home).join(".cache").join("keyward").join("creds")),
        None => Err(CacheError::NoHome),
    }
}

/// What an entry is for. Two different subjects never share a key: see [`Key::new`].
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Key([u8; 32]);

/// What identifies the subject in a [`Key`].
#[derive(Debug)]
pub(super) enum KeySubject<'a> {
    /// A token read from a file or a variable: the token is the subject.
    Token(&'a str),
    /// A command that prints a fresh token each time it runs: its output depends on its text,
    /// the directory it runs in and its environment, so all three are the subject.
    Command {
        /// The command text.
        command: &'a str,
        /// The working directory.
        cwd: &'a Path,
        /// The whole environment, in any order.
        env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    },
}

impl Key {
    /// SHA-256 over the broker address, the target and the subject, each length-prefixed (so no
    /// two different inputs concatenate alike). A one-way hash: the file name reveals neither
    /// the token nor the environment.
    pub(super) fn new(addr: &str, target: &str, subject: &KeySubject<'_>) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let mut context = digest::Context::new(&digest::SHA256);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_be_bytes());
            context.update(bytes);
        };
        field(b"keyward creds cache v1");
        field(addr.trim_end_matches('/').as_bytes());
        field(target.as_bytes());
        match subject {
            KeySubject::Token(token) => {
                field(b"token");
                field(token.as_bytes());
            }
            KeySubject::Command { command, cwd, env } => {
                field(b"command");
                field(command.as_bytes());
                field(cwd.as_os_str().as_bytes());
                let mut env: Vec<_> = env.iter().collect();
                env.sort();
                for (name, value) in env {
                    field(name.as_bytes());
                    field(value.as_bytes());
                }
            }
        }
        let mut key = [0; 32];
        key.copy_from_slice(context.finish().as_ref());
        Self(key)
    }

    fn file_name(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// A secret string: `Debug` prints `"…"`, no `Display`, zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Secret(String);

impl Secret {
    pub(super) fn new(value: String) -> Self {
        Self(value)
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"…\"")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// What an exchange obtained, in the form every output format is rendered from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Credentials {
    /// AWS session credentials.
    Aws {
        /// Not secret: what CloudTrail shows.
        access_key_id: String,
        /// Secret.
        secret_access_key: Secret,
        /// Secret.
        session_token: Secret,
        /// RFC 3339, as STS and `credential_process` spell it.
        expiration: String,
    },
    /// A Vault token.
    Vault {
        /// Secret.
        token: Secret,
    },
}

/// A cached exchange result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    version: u32,
    /// The target, for a person reading the directory.
    target: String,
    /// When the credentials expire, seconds since the epoch.
    pub(super) expires_at: i64,
    /// The credentials.
    pub(super) credentials: Credentials,
}

/// How usable an entry is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    /// Outside the refresh window: hand it out.
    Fresh,
    /// Inside the refresh window, not yet expired.
    Due,
    /// Expired (or about to, within a few seconds).
    Expired,
}

/// Credentials this close to expiry are as good as expired: the caller would not get to use them.
const EXPIRY_MARGIN_SECONDS: i64 = 10;

impl Entry {
    pub(super) fn new(target: &str, expires_at: i64, credentials: Credentials) -> Self {
        Self { version: ENTRY_VERSION, target: target.to_owned(), expires_at, credentials }
    }

    /// Whether the entry may be handed out at `now` (seconds since the epoch).
    pub(super) fn freshness(&self, now: i64, refresh_before: Duration) -> Freshness {
        let left = self.expires_at.saturating_sub(now);
        let window = i64::try_from(refresh_before.as_secs()).unwrap_or(i64::MAX);
        if left <= EXPIRY_MARGIN_SECONDS {
            Freshness::Expired
        } else if left <= window {
            Freshness::Due
        } else {
            Freshness::Fresh
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub(super) enum Lookup {
    /// An entry.
    Hit(Entry),
    /// Nothing usable: no entry, or one that does not parse.
    Miss,
    /// An entry that is not safe to trust (why); the next write replaces it.
    Ignored(&'static str),
}

/// The cache directory, checked and ready.
#[derive(Debug, Clone)]
pub(super) struct CacheDir {
    path: PathBuf,
}

/// Held while an invocation looks up, exchanges and stores; released on drop.
#[derive(Debug)]
pub(super) struct CacheLock {
    _lock: Flock<File>,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn nofollow() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC
}

impl CacheDir {
    /// Creates the directory (0700) if needed and checks that it is the user's own. `notes`
    /// receives what was repaired (a directory that others could read), for stderr.
    pub(super) fn open(path: PathBuf, notes: &mut Vec<String>) -> Result<Self, CacheError> {
        let dir_error = |source| CacheError::Dir { path: path.clone(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(dir_error)?;
        let metadata = std::fs::symlink_metadata(&path).map_err(dir_error)?;
        if !metadata.file_type().is_dir() {
            return Err(CacheError::UnsafeDir { path, why: "is not a directory (a symlink?)" });
        }
        if metadata.uid() != euid() {
            return Err(CacheError::UnsafeDir { path, why: "belongs to another user" });
        }
        if metadata.mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
            notes.push(format!("cache directory {} was open to other users; it is now 0700", path.display()));
        }
        Ok(Self { path })
    }

    /// Takes the cache's lock, waiting for another invocation to finish its exchange. Blocks:
    /// call from a blocking thread.
    pub(super) fn lock(&self) -> Result<CacheLock, CacheError> {
        let path = self.path.join(".lock");
        let lock_error = |source| CacheError::Lock { path: path.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&path)
            .map_err(lock_error)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| lock_error(errno.into()))?;
        Ok(CacheLock { _lock: lock })
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        self.path.join(key.file_name())
    }

    /// The entry for `key`, if there is a trustworthy one that parses.
    pub(super) fn read(&self, key: &Key, _lock: &CacheLock) -> Lookup {
        read_entry(&self.entry_path(key))
    }

    /// Stores `entry` under `key`, replacing what was there (even an ignored entry), then drops
    /// entries that have expired.
    pub(super) fn write(&self, key: &Key, entry: &Entry, now: i64, _lock: &CacheLock) -> Result<(), CacheError> {
        let mut bytes = serde_json::to_vec(entry)?;
        let target = self.entry_path(key);
        let temporary = self.path.join(format!(".{}.{}.tmp", key.file_name(), uuid::Uuid::now_v7().simple()));
        let result = write_new(&temporary, &bytes)
            .and_then(|()| std::fs::rename(&temporary, &target))
            .map_err(|source| CacheError::Write { path: target.clone(), source });
        bytes.zeroize();
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        result?;
        self.prune(now);
        Ok(())
    }

    /// Removes expired and unreadable entries, and temporary files (a writer holds the lock, as
    /// the caller does, so any left are a dead writer's). Best effort: a cache that cannot be
    /// tidied still works.
    fn prune(&self, now: i64) {
        let Ok(entries) = std::fs::read_dir(&self.path) else { return };
        for dirent in entries.flatten() {
            let name = dirent.file_name();
            if name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp")) {
                let _ = std::fs::remove_file(dirent.path());
                continue;
            }
            let is_entry = name.len() == 64 && name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_entry {
                continue;
            }
            let stale = match read_entry(&dirent.path()) {
                Lookup::Hit(entry) => entry.freshness(now, Duration::ZERO) == Freshness::Expired,
                Lookup::Miss | Lookup::Ignored(_) => true,
            };
            if stale {
                let _ = std::fs::remove_file(dirent.path());
            }
        }
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nofollow()).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_entry(path: &Path) -> Lookup {
    let mut file = match OpenOptions::new().read(true).custom_flags(nofollow()).open(path) {
        Ok(file) => file,
        Err(error) if error.raw_os_error() == Some(nix::libc::ELOOP) => return Lookup::Ignored("it is a symlink"),
        Err(_) => return Lookup::Miss,
    };
    let Ok(metadata) = file.metadata() else { return Lookup::Miss };
    if !metadata.file_type().is_file() {
        return Lookup::Ignored("it is not a regular file");
    }
    if metadata.uid() != euid() {
        return Lookup::Ignored("it belongs to another user");
    }
    if metadata.mode() & 0o077 != 0 {
        return Lookup::Ignored("other users can access it");
    }
    if metadata.len() > MAX_ENTRY_BYTES {
        return Lookup::Miss;
    }
    let mut bytes = Vec::new();
    if (&mut file).take(MAX_ENTRY_BYTES).read_to_end(&mut bytes).is_err() {
        bytes.zeroize();
        return Lookup::Miss;
    }
    let parsed = serde_json::from_slice::<Entry>(&bytes);
    bytes.zeroize();
    match parsed {
        Ok(entry) if entry.version == ENTRY_VERSION => Lookup::Hit(entry),
        _ => Lookup::Miss,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn vault(token: &str, expires_at: i64) -> Entry {
        Entry::new("vault:x", expires_at, Credentials::Vault { token: Secret::new(token.to_owned()) })
    }

    fn token_of(lookup: Lookup) -> Option<String> {
        match lookup {
            Lookup::Hit(Entry { credentials: Credentials::Vault { token }, .. }) => Some(token.expose().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn freshness_follows_the_refresh_window() {
        let entry = vault("t", 1_000);
        let window = Duration::from_secs(100);
        assert_eq!(entry.freshness(899, window), Freshness::Fresh);
        assert_eq!(entry.freshness(900, window), Freshness::Due);
        assert_eq!(entry.freshness(989, window), Freshness::Due);
        assert_eq!(entry.freshness(990, window), Freshness::Expired);
        assert_eq!(entry.freshness(5_000, window), Freshness::Expired);
    }

    #[test]
    fn different_subjects_targets_and_brokers_never_share_a_key() {
        let env = |v: &str| vec![("A".into(), v.into())];
        let cwd = Path::new("/w");
        let command = |e: &str| KeySubject::Command { command: "get-token", cwd, env: env(e) };
        let keys = [
            Key::new("http://b", "aws:t", &KeySubject::Token("one")),
            Key::new("http://b", "aws:t", &KeySubject::Token("two")),
            Key::new("http://b", "aws:u", &KeySubject::Token("one")),
            Key::new("http://c", "aws:t", &KeySubject::Token("one")),
            Key::new("http://b", "aws:t", &command("1")),
            Key::new("http://b", "aws:t", &command("2")),
            Key::new(
                "http://b",
                "aws:t",
                &KeySubject::Command { command: "get-token", cwd: Path::new("/v"), env: env("1") },
            ),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in keys.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
        // The same subject is the same key: a trailing slash and the environment's order do not matter.
        assert_eq!(keys[0], Key::new("http://b/", "aws:t", &KeySubject::Token("one")));
        let both = |first: (&str, &str), second: (&str, &str)| KeySubject::Command {
            command: "c",
            cwd,
            env: vec![(first.0.into(), first.1.into()), (second.0.into(), second.1.into())],
        };
        assert_eq!(
            Key::new("a", "t", &both(("X", "1"), ("Y", "2"))),
            Key::new("a", "t", &both(("Y", "2"), ("X", "1")))
        );
    }

    #[test]
    fn an_entry_round_trips_in_a_private_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(root.path().join("keyward/creds"), &mut Vec::new()).unwrap();
        let lock = dir.lock().unwrap();
        let key = Key::new("a", "vault:x", &KeySubject::Token("subject"));
        assert!(matches!(dir.read(&key, &lock), Lookup::Miss));
        dir.write(&key, &vault("hvs.secret", 2_000), 1_000, &lock).unwrap();
        assert_eq!(token_of(dir.read(&key, &lock)).as_deref(), Some("hvs.secret"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&root.path().join("keyward/creds")), 0o700);
        assert_eq!(mode(&dir.entry_path(&key)), 0o600);
        let text = std::fs::read_to_string(dir.entry_path(&key)).unwrap();
        assert!(!text.contains("subject"), "no subject token on disk: {text}");
    }

    #[test]
    fn untrustworthy_or_corrupt_entries_are_not_used_and_get_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(root.path().to_path_buf(), &mut Vec::new()).unwrap();
        let lock = dir.lock().unwrap();
        let key = Key::new("a", "vault:x", &KeySubject::Token("s"));
        let path = dir.entry_path(&key);

        std::fs::write(&path, "{not json").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(dir.read(&key, &lock), Lookup::Miss), "corrupt is a miss");

        dir.write(&key, &vault("mine", 2_000), 1_000, &lock).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(dir.read(&key, &lock), Lookup::Ignored(_)), "readable by others");
        dir.write(&key, &vault("new", 2_000), 1_000, &lock).unwrap();
        assert_eq!(token_of(dir.read(&key, &lock)).as_deref(), Some("new"));

        // A symlink planted in place of the entry is never followed, and the write replaces the
        // link itself, not what it points to.
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, serde_json::to_vec(&vault("planted", 2_000)).unwrap()).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(matches!(dir.read(&key, &lock), Lookup::Ignored(_)), "a symlink");
        dir.write(&key, &vault("real", 2_000), 1_000, &lock).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert!(std::fs::read_to_string(&elsewhere).unwrap().contains("planted"));
    }

    #[test]
    fn a_directory_open_to_others_is_closed_and_expired_entries_are_pruned() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("creds");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut notes = Vec::new();
        let dir = CacheDir::open(path.clone(), &mut notes).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        assert_eq!(notes.len(), 1, "{notes:?}");

        let lock = dir.lock().unwrap();
        let old = Key::new("a", "t", &KeySubject::Token("old"));
        let new = Key::new("a", "t", &KeySubject::Token("new"));
        dir.write(&old, &vault("o", 1_000), 500, &lock).unwrap();
        dir.write(&new, &vault("n", 5_000), 2_000, &lock).unwrap();
        assert!(matches!(dir.read(&old, &lock), Lookup::Miss), "pruned once expired");
        assert!(matches!(dir.read(&new, &lock), Lookup::Hit(_)));

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(CacheDir::open(link, &mut Vec::new()), Err(CacheError::UnsafeDir { .. })));
    }

    #[test]
    fn the_default_directory_follows_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let dir = |pairs| default_dir(&env(pairs)).ok();
        assert_eq!(dir(&[("XDG_CACHE_HOME", "/c"), ("HOME", "/h")]), Some(PathBuf::from("/c/keyward/creds")));
        assert_eq!(dir(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]), Some(PathBuf::from("/h/.cache/keyward/creds")));
        assert_eq!(dir(&[]), None);
    }
}
