//! Row changes that commit in the same transaction as audit entries.
//!
//! A run's state change and the audit entry that records it must be one fact: never a state
//! without its entry, never an entry for a change that did not happen. So the change travels
//! with the entries in an [`Append`](crate::audit::Append) and the audit writer executes it inside
//! its batch transaction, each append's writes under their own savepoint. A write carries the
//! condition it depends on (`WHERE state = 'planned'`, a unique name) and how many rows it must
//! touch; when that does not hold, only that append is refused, with nothing of it written, and
//! the rest of the batch commits.

use sqlx::Row as _;

/// One bound parameter (`$1`, `$2`, … in the statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// TEXT.
    Text(String),
    /// TEXT or NULL.
    OptText(Option<String>),
    /// BIGINT.
    Int(i64),
    /// BIGINT or NULL.
    OptInt(Option<i64>),
    /// BLOB/BYTEA or NULL.
    OptBytes(Option<Vec<u8>>),
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Param {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Self::OptText(value)
    }
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<Option<i64>> for Param {
    fn from(value: Option<i64>) -> Self {
        Self::OptInt(value)
    }
}

impl From<Vec<u8>> for Param {
    fn from(value: Vec<u8>) -> Self {
        Self::OptBytes(Some(value))
    }
}

impl From<Option<Vec<u8>>> for Param {
    fn from(value: Option<Vec<u8>>) -> Self {
        Self::OptBytes(value)
    }
}

/// A guarded statement: `sql` with `params`, which must affect exactly `rows` rows (when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    what: String,
    sql: &'static str,
    params: Vec<Param>,
    rows: Option<u64>,
}

/// Why a write (and so its whole append) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The condition did not hold: the statement touched a different number of rows (the run
    /// moved on, the job was re-leased).
    Unmet {
        /// What the write was about, e.g. `run 01J… in state planned`.
        what: String,
    },
    /// A uniqueness rule was violated (the stack name is taken, the reviewer already reviewed).
    Duplicate {
        /// What already exists.
        what: String,
    },
    /// Another constraint refused the row (a foreign key, a check).
    Invalid {
        /// What the write was about.
        what: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unmet { what } => write!(f, "{what} changed meanwhile"),
            Self::Duplicate { what } => write!(f, "{what} already exists"),
            Self::Invalid { what } => write!(f, "{what} is not acceptable to the database"),
        }
    }
}

impl Write {
    /// A statement that must touch exactly one row.
    pub fn one(what: impl Into<String>, sql: &'static str, params: Vec<Param>) -> Self {
        Self { what: what.into(), sql, params, rows: Some(1) }
    }

    /// A statement that may touch any number of rows.
    pub fn any(what: impl Into<String>, sql: &'static str, params: Vec<Param>) -> Self {
        Self { what: what.into(), sql, params, rows: None }
    }

    /// Runs the statement. `Ok(Err(_))` when its condition failed or a constraint refused it;
    /// `Err` when the database itself failed (the whole batch then fails).
    pub(crate) async fn execute(&self, conn: &mut sqlx::AnyConnection) -> Result<Result<(), Refusal>, sqlx::Error> {
        let mut query = sqlx::query(self.sql);
        for param in &self.params {
            query = match param {
                Param::Text(value) => query.bind(value.as_str()),
                Param::OptText(value) => query.bind(value.as_deref()),
                Param::Int(value) => query.bind(*value),
                Param::OptInt(value) => query.bind(*value),
                Param::OptBytes(value) => query.bind(value.as_deref()),
            };
        }
        match query.execute(&mut *conn).await {
            Ok(done) if self.rows.is_none_or(|rows| rows == done.rows_affected()) => Ok(Ok(())),
            Ok(_) => Ok(Err(Refusal::Unmet { what: self.what.clone() })),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Ok(Err(Refusal::Duplicate { what: self.what.clone() }))
            }
            Err(sqlx::Error::Database(db)) => {
                tracing::warn!(what = %self.what, error = %db, "a guarded write was refused by a constraint");
                Ok(Err(Refusal::Invalid { what: self.what.clone() }))
            }
            Err(error) => Err(error),
        }
    }
}

/// Runs `writes` under a savepoint: all of them, or (on a refusal) none.
pub(crate) async fn execute_all(
    conn: &mut sqlx::AnyConnection,
    writes: &[Write],
) -> Result<Result<(), Refusal>, sqlx::Error> {
    sqlx::query("SAVEPOINT guarded_write").execute(&mut *conn).await?;
    for write in writes {
        if let Err(refusal) = write.execute(conn).await? {
            sqlx::query("ROLLBACK TO SAVEPOINT guarded_write").execute(&mut *conn).await?;
            sqlx::query("RELEASE SAVEPOINT guarded_write").execute(&mut *conn).await?;
            return Ok(Err(refusal));
        }
    }
    sqlx::query("RELEASE SAVEPOINT guarded_write").execute(&mut *conn).await?;
    Ok(Ok(()))
}

/// Locks the audit head row (PostgreSQL) so guarded writes always run after it is held: every
/// batch takes the head first and rows after, so two replicas' batches cannot deadlock.
pub(crate) async fn lock_head(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT size FROM audit_head WHERE id = 1 FOR UPDATE").fetch_one(&mut *conn).await?.try_get("size")
}
