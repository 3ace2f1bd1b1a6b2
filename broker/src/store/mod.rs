//! Persistence: SQLite (the embedded default) or PostgreSQL, behind one async API.
//!
//! Both backends go through sqlx's `Any` driver with the same SQL (`$n` placeholders work on both), so
//! there is one code path to test. Each backend has its own migration files because column types
//! differ (`BLOB` vs `BYTEA`). The store knows nothing about HTTP or crypto: it moves rows.

pub mod agents;
pub mod api_tokens;
pub(crate) mod audit;
pub(crate) mod audit_batch;
pub(crate) mod audit_codec;
mod audit_convert;
mod audit_integrate;
pub mod backup;
pub mod console_sessions;
pub mod contexts;
pub mod drift;
pub mod files;
mod leases;
mod location;
mod logs;
mod metrics;
pub mod notify;
mod replay;
pub mod runs;
pub mod scans;
pub mod sessions;
mod signing_keys;
pub mod spaces;
pub mod state;
pub mod vcs;
pub mod write;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, ConnectOptions as _, Executor as _, SqlSafeStr as _};

pub use agents::{AgentHello, AgentRow, JoinTokenRow, PoolRow};
pub use api_tokens::{ApiTokenRow, NewApiToken};
pub use audit::{CheckpointRow, StoredEntry};
pub use audit_integrate::Integrated;
pub use drift::{ActiveDriftRun, DriftCounts, DriftRow, ScheduledStack};
pub use location::DatabaseLocation;
pub use logs::{ChunkRow, LogHead, NewChunk};
pub use replay::PRUNE_BATCH;
pub use runs::{JobRow, NewStack, PlanRow, ReviewRow, RunFilter, RunRow, SealedPlanRow, StackRow};
pub use scans::JobScanRow;
pub use sessions::{LoginRow, SessionRow};
pub use signing_keys::{KeyState, SigningKeyRow};
pub use state::{SealedState, StateLockRow, StateVersionRow};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect or open the database.
    #[error("cannot open database {location}: {source}")]
    Open {
        /// Which database (never includes a password).
        location: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Could not create the directory for the SQLite file, or make it or the file private.
    #[error("cannot create or restrict {path}: {source}")]
    DataDir {
        /// The directory or file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory belongs to another user, who could open it to others again.
    #[error(
        "data directory {path} is owned by uid {owner}, not by the broker's uid {uid}: run `chown {uid} {path}`, or choose another storage.data_dir"
    )]
    DataDirOwner {
        /// The directory.
        path: String,
        /// Its owner.
        owner: u32,
        /// The broker's effective uid.
        uid: u32,
    },
    /// Schema migration failed.
    #[error("cannot migrate database {location}: {source}")]
    Migrate {
        /// Which database.
        location: String,
        /// Why.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A uniqueness rule was violated (e.g. a duplicate API token name).
    #[error("{0} already exists")]
    Conflict(String),
    /// An audit log commit failed (the message is the underlying error); nothing of the append
    /// was written.
    #[error("could not append to the audit log: {0}")]
    Append(String),
    /// A row holds a value the code does not understand.
    #[error("database row is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database is out of reach (a connection lost or refused, the pool exhausted
    /// or closed, the server shutting down): a retry may work, and the caller's request is not
    /// the problem.
    pub fn is_unavailable(&self) -> bool {
        let Self::Query(error) = self else { return false };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception) and 57P (operator intervention: shutdown).
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
            }
            _ => false,
        }
    }
}

/// Which database engine backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The statement that starts a transaction that will write (see [`Store::begin_write`]).
    pub(crate) fn begin_write_sql(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }
}

/// The handle every component uses to reach the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    location: String,
    /// Whose turn it is to write the audit log's tables on SQLite (see [`Store::audit_write_turn`]).
    audit_writes: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).field("location", &self.location).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(location: &DatabaseLocation) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url, described) = match location {
            DatabaseLocation::Sqlite(path) => {
                if path.as_os_str() != ":memory:" {
                    files::private_database(path)?;
                }
                let url = format!("sqlite://{}?mode=rwc", sqlite_url_path(path)?);
                (Backend::Sqlite, url, format!("sqlite:{}", path.display()))
            }
            DatabaseLocation::Postgres(url) => (Backend::Postgres, url.clone(), redact_url(url)),
        };
        let open_error = |source| StoreError::Open { location: described.clone(), source };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(open_error)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool_options = match backend {
            // One writer at a time is SQLite's model; WAL lets readers proceed alongside it.
            Backend::Sqlite => AnyPoolOptions::new().max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    // 32 MiB of page cache per connection (SQLite's default is 2 MiB): the audit
                    // log's indexes outgrow the default quickly, and every miss is a pread.
                    conn.execute("PRAGMA cache_size = -32768").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA temp_store = MEMORY").await?;
                    Ok(())
                })
            }),
            // Durable before acknowledged: a commit waits for its WAL flush even where the
            // cluster's default is `synchronous_commit = off`. A stronger setting (`remote_apply`,
            // say, for synchronous standbys) is left as the operator chose it.
            Backend::Postgres => AnyPoolOptions::new().max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "SELECT set_config('synchronous_commit', 'on', false) \
                         WHERE current_setting('synchronous_commit') = 'off'",
                    )
                    .await?;
                    Ok(())
                })
            }),
        };
        let pool =
            pool_options.acquire_timeout(Duration::from_secs(10)).connect_with(options).await.map_err(open_error)?;
        let store = Self { pool, backend, location: described, audit_writes: Arc::default() };
        store.migrate().await?;
        store.convert_legacy_audit().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let files: [(i64, &str, &'static str); 27] = match self.backend {
            Backend::Sqlite => [
                (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
                (2, "exchange", include_str!("../../migrations/sqlite/0002_exchange.sql")),
                (3, "audit", include_str!("../../migrations/sqlite/0003_audit.sql")),
                (4, "runs", include_str!("../../migrations/sqlite/0004_runs.sql")),
                (5, "agents", include_str!("../../migrations/sqlite/0005_agents.sql")),
                (6, "agent_capabilities", include_str!("../../migrations/sqlite/0006_agent_capabilities.sql")),
                (7, "logs", include_str!("../../migrations/sqlite/0007_logs.sql")),
                (8, "plans", include_str!("../../migrations/sqlite/0008_plans.sql")),
                (9, "drift", include_str!("../../migrations/sqlite/0009_drift.sql")),
                (10, "review_scope", include_str!("../../migrations/sqlite/0010_review_scope.sql")),
                (11, "sealed_plans", include_str!("../../migrations/sqlite/0011_sealed_plans.sql")),
                (12, "audit_batches", include_str!("../../migrations/sqlite/0012_audit_batches.sql")),
                (13, "managed_state", include_str!("../../migrations/sqlite/0013_managed_state.sql")),
                (14, "drift_schedule", include_str!("../../migrations/sqlite/0014_drift_schedule.sql")),
                (15, "notifications", include_str!("../../migrations/sqlite/0015_notifications.sql")),
                (16, "contexts", include_str!("../../migrations/sqlite/0016_contexts.sql")),
                (17, "hooks", include_str!("../../migrations/sqlite/0017_hooks.sql")),
                (18, "context_files_hooks", include_str!("../../migrations/sqlite/0018_context_files_hooks.sql")),
                (19, "scans", include_str!("../../migrations/sqlite/0019_scans.sql")),
                (20, "person_sessions", include_str!("../../migrations/sqlite/0020_person_sessions.sql")),
                (21, "spaces", include_str!("../../migrations/sqlite/0021_spaces.sql")),
                (22, "reviewer_identity", include_str!("../../migrations/sqlite/0022_reviewer_identity.sql")),
                (23, "vcs_deliveries", include_str!("../../migrations/sqlite/0023_vcs_deliveries.sql")),
                (24, "stack_triggers", include_str!("../../migrations/sqlite/0024_stack_triggers.sql")),
                (25, "vcs_runs", include_str!("../../migrations/sqlite/0025_vcs_runs.sql")),
                (26, "console_sessions", include_str!("../../migrations/sqlite/0026_console_sessions.sql")),
                (27, "stack_tool", include_str!("../../migrations/sqlite/0027_stack_tool.sql")),
            ],
            Backend::Postgres => [
                (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
                (2, "exchange", include_str!("../../migrations/postgres/0002_exchange.sql")),
                (3, "audit", include_str!("../../migrations/postgres/0003_audit.sql")),
                (4, "runs", include_str!("../../migrations/postgres/0004_runs.sql")),
                (5, "agents", include_str!("../../migrations/postgres/0005_agents.sql")),
                (6, "agent_capabilities", include_str!("../../migrations/postgres/0006_agent_capabilities.sql")),
                (7, "logs", include_str!("../../migrations/postgres/0007_logs.sql")),
                (8, "plans", include_str!("../../migrations/postgres/0008_plans.sql")),
                (9, "drift", include_str!("../../migrations/postgres/0009_drift.sql")),
                (10, "review_scope", include_str!("../../migrations/postgres/0010_review_scope.sql")),
                (11, "sealed_plans", include_str!("../../migrations/postgres/0011_sealed_plans.sql")),
                (12, "audit_batches", include_str!("../../migrations/postgres/0012_audit_batches.sql")),
                (13, "managed_state", include_str!("../../migrations/postgres/0013_managed_state.sql")),
                (14, "drift_schedule", include_str!("../../migrations/postgres/0014_drift_schedule.sql")),
                (15, "notifications", include_str!("../../migrations/postgres/0015_notifications.sql")),
                (16, "contexts", include_str!("../../migrations/postgres/0016_contexts.sql")),
                (17, "hooks", include_str!("../../migrations/postgres/0017_hooks.sql")),
                (18, "context_files_hooks", include_str!("../../migrations/postgres/0018_context_files_hooks.sql")),
                (19, "scans", include_str!("../../migrations/postgres/0019_scans.sql")),
                (20, "person_sessions", include_str!("../../migrations/postgres/0020_person_sessions.sql")),
                (21, "spaces", include_str!("../../migrations/postgres/0021_spaces.sql")),
                (22, "reviewer_identity", include_str!("../../migrations/postgres/0022_reviewer_identity.sql")),
                (23, "vcs_deliveries", include_str!("../../migrations/postgres/0023_vcs_deliveries.sql")),
                (24, "stack_triggers", include_str!("../../migrations/postgres/0024_stack_triggers.sql")),
                (25, "vcs_runs", include_str!("../../migrations/postgres/0025_vcs_runs.sql")),
                (26, "console_sessions", include_str!("../../migrations/postgres/0026_console_sessions.sql")),
                (27, "stack_tool", include_str!("../../migrations/postgres/0027_stack_tool.sql")),
            ],
        };
        let migrations = files
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(version, Cow::Borrowed(name), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        migrator.run(&self.pool).await.map_err(|source| StoreError::Migrate { location: self.location.clone(), source })
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): two deferred transactions that both read and then write would
    /// otherwise make SQLite fail the second at once with `SQLITE_BUSY` instead of waiting.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(self.pool.begin_with(self.backend.begin_write_sql()).await?)
    }

    /// On SQLite, waits for the audit log's writer or integrator to finish its transaction and
    /// holds the turn until the returned guard drops; on PostgreSQL (row locks) there is no turn.
    /// SQLite has one write lock, and a transaction that finds it taken retries from its busy
    /// handler after sleeps of up to 100 ms; two tasks of this process taking turns here hand
    /// the lock over as soon as it is free.
    pub(crate) async fn audit_write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(Arc::clone(&self.audit_writes).lock_owned().await),
            Backend::Postgres => None,
        }
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database location, safe to print (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Round-trips a trivial query; readiness uses it.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// How a commit on this store's connections reaches the disk, as the engine reports it:
    /// SQLite's `PRAGMA synchronous` by name (`full`: every commit is fsynced) or PostgreSQL's
    /// `synchronous_commit` (`on`, or a stronger level). The audit log's "durable before
    /// acknowledged" rests on it. A diagnostic: tests read it, nothing in the broker branches on it.
    pub async fn commit_durability(&self) -> Result<String, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(match self.backend {
            Backend::Sqlite => {
                let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await?;
                match level {
                    0 => "off",
                    1 => "normal",
                    2 => "full",
                    3 => "extra",
                    _ => "unknown",
                }
                .to_owned()
            }
            Backend::Postgres => {
                sqlx::query_scalar("SELECT current_setting('synchronous_commit')").fetch_one(&mut *conn).await?
            }
        })
    }

    /// Closes every connection; waits for in-flight queries.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The path part of an sqlx SQLite URL: sqlx percent-decodes it, so `%`, `?` and `#` in a
/// directory name must be encoded or they would be read as URL syntax.
fn sqlite_url_path(path: &Path) -> Result<String, StoreError> {
    let text = path.to_str().ok_or_else(|| StoreError::DataDir {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the database path is not valid UTF-8"),
    })?;
    Ok(text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            other => out.push(other),
        }
        out
    }))
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "postgres://…".to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let path = tail.split('?').next().unwrap_or_default();
    format!("{scheme}://{authority}/{path}")
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict_or(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let what = what.into();
    move |error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Query(error),
    }
}

#[cfg(test)]
mod tests {
    use super::{DatabaseLocation, Store, redact_url};

    #[tokio::test]
    async fn sqlite_paths_with_url_syntax_characters_work() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("odd 100% #1?x").join("keyward.db");
        let store = Store::open(&DatabaseLocation::Sqlite(path.clone())).await?;
        store.ping().await?;
        assert!(path.exists(), "the database is where it was asked to be");
        Ok(())
    }

    #[tokio::test]
    async fn every_sqlite_connection_fsyncs_its_commits() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("keyward.db"))).await?;
        // Hold as many connections as the pool allows, so each one it may hand out is checked.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(store.pool.acquire().await?);
        }
        for conn in &mut held {
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await?;
            assert_eq!(level, 2, "PRAGMA synchronous = FULL");
        }
        drop(held);
        assert_eq!(store.commit_durability().await?, "full");
        Ok(())
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kw:hunter2@db:5432/keyward?sslmode=require"),
            "postgres://kw@db:5432/keyward"
        );
        assert_eq!(redact_url("postgres://db/keyward"), "postgres://db/keyward");
        assert!(!redact_url("postgresql://a:b@c/d").contains('b'));
    }
}
