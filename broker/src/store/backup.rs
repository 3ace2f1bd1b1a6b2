//! Online backups of the SQLite database: a consistent copy of a running broker's data, taken on
//! its host without stopping it, written so that a failed backup leaves nothing behind.
//!
//! Why `VACUUM INTO` from a second, read-only connection: in WAL mode it reads one snapshot (a
//! read transaction) while the broker keeps committing, so the copy is the database as of one
//! commit, never half of one; it needs no native dependency beyond the SQLite sqlx bundles; and it
//! writes a compacted file, so pages the broker freed (erased plans, pruned entries) are not
//! carried into the backup.
//!
//! The file appears only when it is complete: the copy goes to a hidden temporary file created
//! 0600 beside the target (the backup holds the audit log, sealed secrets and token hashes: the
//! broker's files are 0600, so is its backup), is checked (SQLite's `quick_check`, the schema
//! and the audit log's size), fsynced, and linked to the target name, which fails rather than
//! replace a file that appeared meanwhile. Any failure removes the temporary file.
//!
//! PostgreSQL is refused: `pg_dump` is the tool (docs/operations.md, Backup and restore).

use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use super::files::FILE_MODE;
use super::{Backend, DatabaseLocation, Store, sqlite_url_path};

/// What a finished backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    /// The file's size in bytes.
    pub bytes: u64,
    /// The newest schema migration in the copy.
    pub schema: i64,
    /// The audit log's size (entries) in the copy.
    pub audit_entries: u64,
}

/// Why a backup was not written. In every case no file is left at the target or beside it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The broker's database is PostgreSQL.
    #[error(
        "the broker's database is PostgreSQL: back it up with `pg_dump --format=custom --file FILE` against the same database (see docs/operations.md, \"Backup and restore\"); `keyward backup` copies SQLite databases only"
    )]
    Postgres,
    /// The target exists; a backup never replaces a file.
    #[error("{path} already exists: a backup never overwrites a file; choose a new name or move the old one away")]
    Exists {
        /// The target.
        path: PathBuf,
    },
    /// There is no database where the configuration says.
    #[error("no database at {path}: check storage.data_dir (or --data-dir), and run this on the broker's host")]
    Missing {
        /// The expected database file.
        path: PathBuf,
    },
    /// The target's directory cannot take the file.
    #[error("cannot write the backup in {dir}: {source}")]
    Target {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite could not read the database or write the copy.
    #[error("cannot copy the database {path}: {source}")]
    Copy {
        /// The database.
        path: PathBuf,
        /// Why.
        source: sqlx::Error,
    },
    /// The copy was written but is not a whole Keyward database.
    #[error("the copy of {path} is not usable, so it was deleted: {problem}")]
    Check {
        /// The database that was copied.
        path: PathBuf,
        /// What is wrong with the copy.
        problem: String,
    },
}

/// Copies the database at `location` to `to` (see the module docs). `to` must not exist.
pub async fn backup(location: &DatabaseLocation, to: &Path) -> Result<BackupReport, BackupError> {
    let database = match location {
        DatabaseLocation::Sqlite(path) => path,
        DatabaseLocation::Postgres(_) => return Err(BackupError::Postgres),
    };
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(BackupError::Exists { path: to.to_owned() });
    }
    if !database.is_file() {
        return Err(BackupError::Missing { path: database.clone() });
    }
    let partial = Partial::create(to)?;
    let copy_failed = |source| BackupError::Copy { path: database.clone(), source };
    let mut source = connect(database).await.map_err(copy_failed)?;
    let copied = sqlx::query("VACUUM INTO $1").bind(partial.path_text()?).execute(&mut source).await;
    source.close().await.map_err(copy_failed)?;
    copied.map_err(copy_failed)?;
    let report =
        check(&partial.path).await.map_err(|problem| BackupError::Check { path: database.clone(), problem })?;
    partial.publish(to)?;
    Ok(report)
}

/// Opens the database file at `path` (a backup, say) read-only, without migrating it, for
/// reading its audit log ([`crate::audit::stored`]).
pub async fn open_read_only(path: &Path) -> Result<Store, BackupError> {
    if !path.is_file() {
        return Err(BackupError::Missing { path: path.to_owned() });
    }
    let failed = |source| BackupError::Copy { path: path.to_owned(), source };
    sqlx::any::install_default_drivers();
    let text = sqlite_url_path(path).map_err(|error| failed(sqlx::Error::Configuration(error.to_string().into())))?;
    let options = AnyConnectOptions::from_str(&format!("sqlite://{text}?mode=ro")).map_err(failed)?;
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| Box::pin(async move { conn.execute("PRAGMA busy_timeout = 5000").await.map(drop) }))
        .connect_with(options.disable_statement_logging())
        .await
        .map_err(failed)?;
    Ok(Store {
        pool,
        backend: Backend::Sqlite,
        location: format!("sqlite:{}", path.display()),
        audit_writes: Arc::default(),
    })
}

/// A read-only connection to `path` that waits for locks (a WAL recovery, say) instead of failing.
async fn connect(path: &Path) -> Result<sqlx::AnyConnection, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let text = sqlite_url_path(path).map_err(|error| sqlx::Error::Configuration(error.to_string().into()))?;
    let mut connection =
        AnyConnectOptions::from_str(&format!("sqlite://{text}?mode=ro"))?.disable_statement_logging().connect().await?;
    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut connection).await?;
    Ok(connection)
}

/// Opens the copy read-only and checks it is a whole Keyward database: pages intact, the schema
/// migrated, the audit log's head readable.
async fn check(path: &Path) -> Result<BackupReport, String> {
    let mut copy = connect(path).await.map_err(|e| e.to_string())?;
    let result = async {
        let verdict: String = sqlx::query_scalar("PRAGMA quick_check").fetch_one(&mut copy).await?;
        let schema: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(&mut copy).await?;
        let size: i64 = sqlx::query_scalar("SELECT size FROM audit_head WHERE id = 1").fetch_one(&mut copy).await?;
        Ok::<_, sqlx::Error>((verdict, schema, size))
    }
    .await;
    let _ = copy.close().await;
    let (verdict, schema, size) = result.map_err(|error| match error {
        sqlx::Error::Database(db) if db.message().contains("no such table") => {
            format!("it is not a Keyward database ({}): is the data directory right?", db.message())
        }
        other => other.to_string(),
    })?;
    if verdict != "ok" {
        return Err(format!("SQLite's quick_check says: {verdict}"));
    }
    let bytes = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    Ok(BackupReport {
        bytes,
        schema: schema.ok_or("it has no schema migrations: is the data directory right?")?,
        audit_entries: u64::try_from(size).map_err(|_| format!("its audit log size is {size}"))?,
    })
}

/// The temporary file a backup is written to; removed on drop unless published.
struct Partial {
    path: PathBuf,
    dir: PathBuf,
    published: bool,
}

impl Partial {
    /// Creates an empty 0600 file beside `to` (`VACUUM INTO` fills an empty file and keeps its
    /// mode, where a file it created itself would get the umask's).
    fn create(to: &Path) -> Result<Self, BackupError> {
        let dir = match to.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        // Absolute, so SQLite can never read the name as a `file:` URI.
        let dir = std::path::absolute(&dir).map_err(|source| BackupError::Target { dir, source })?;
        let target_failed = |source| BackupError::Target { dir: dir.clone(), source };
        let name = to.file_name().ok_or_else(|| target_failed(ErrorKind::InvalidInput.into()))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".partial-{}-{}", std::process::id(), nanos.subsec_nanos()));
        let path = dir.join(temp);
        std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&path).map_err(target_failed)?;
        Ok(Self { path, dir, published: false })
    }

    fn path_text(&self) -> Result<String, BackupError> {
        self.path.to_str().map(str::to_owned).ok_or_else(|| BackupError::Target {
            dir: self.dir.clone(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "the path is not UTF-8"),
        })
    }

    /// Makes the copy durable and gives it the target's name, unless that name was taken meanwhile.
    fn publish(mut self, to: &Path) -> Result<(), BackupError> {
        let failed = |source| BackupError::Target { dir: self.dir.clone(), source };
        let file = std::fs::File::open(&self.path).map_err(failed)?;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE)).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        // A hard link fails if the name exists, where a rename would silently replace it.
        match std::fs::hard_link(&self.path, to) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                return Err(BackupError::Exists { path: to.to_owned() });
            }
            Err(error) => return Err(failed(error)),
        }
        self.published = true;
        std::fs::remove_file(&self.path).map_err(failed)?;
        std::fs::File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(failed)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        for suffix in ["-journal", "-wal", "-shm"] {
            let mut companion = self.path.clone().into_os_string();
            companion.push(suffix);
            let _ = std::fs::remove_file(companion);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[tokio::test]
    async fn copies_a_database_once_private_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let location = DatabaseLocation::Sqlite(dir.path().join("data/keyward.db"));
        let store = Store::open(&location).await.unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let to = out.join("backup.db");
        let report = backup(&location, &to).await.unwrap();
        assert!(report.schema >= 26 && report.bytes > 0, "{report:?}");
        assert_eq!(std::fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o600);
        let again = backup(&location, &to).await.unwrap_err();
        assert!(matches!(again, BackupError::Exists { .. }), "{again}");
        assert_eq!(names(&out), ["backup.db"]);
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_backup_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // An SQLite file that is not Keyward's: copied, then refused by the check, then deleted.
        let foreign = dir.path().join("other.db");
        let mut conn = connect_rw(&foreign).await;
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let error = backup(&DatabaseLocation::Sqlite(foreign), &out.join("b.db")).await.unwrap_err();
        assert!(error.to_string().contains("not a Keyward database"), "{error}");
        assert!(names(&out).is_empty(), "{:?}", names(&out));
        let missing = backup(&DatabaseLocation::Sqlite(dir.path().join("none.db")), &out.join("b.db")).await;
        assert!(matches!(missing, Err(BackupError::Missing { .. })));
        let postgres = DatabaseLocation::Postgres("postgres://kw:hunter2@db/kw".to_owned());
        let refused = backup(&postgres, &out.join("b.db")).await.unwrap_err().to_string();
        assert!(refused.contains("pg_dump") && !refused.contains("hunter2"), "{refused}");
        assert!(names(&out).is_empty());
    }

    async fn connect_rw(path: &Path) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        AnyConnectOptions::from_str(&url).unwrap().connect().await.unwrap()
    }
}
