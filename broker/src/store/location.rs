//! Where the database is: an SQLite file or a PostgreSQL URL.
//!
//! A PostgreSQL URL may carry a password, so this type never prints one; the store names a
//! database in errors and logs through its own redacted form.

use std::fmt;
use std::path::PathBuf;

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (may contain a password; never printed).
    Postgres(String),
}

impl DatabaseLocation {
    /// The location a `postgres://`, `postgresql://` or `sqlite:` URL names; `None` for any other.
    pub fn from_url(url: String) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Some(Self::Postgres(url));
        }
        if url.starts_with("sqlite:") {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            return Some(Self::Sqlite(PathBuf::from(path)));
        }
        None
    }
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_backend() {
        let postgres = "postgres://kw:hunter2@db/kw".to_owned();
        assert_eq!(DatabaseLocation::from_url(postgres.clone()), Some(DatabaseLocation::Postgres(postgres)));
        let postgresql = "postgresql://db/kw".to_owned();
        assert_eq!(DatabaseLocation::from_url(postgresql.clone()), Some(DatabaseLocation::Postgres(postgresql)));
        for url in ["sqlite:///var/lib/kw.db", "sqlite:/var/lib/kw.db"] {
            assert_eq!(
                DatabaseLocation::from_url(url.to_owned()),
                Some(DatabaseLocation::Sqlite(PathBuf::from("/var/lib/kw.db")))
            );
        }
        assert_eq!(DatabaseLocation::from_url("mysql://db/kw".to_owned()), None);
    }

    #[test]
    fn a_password_never_prints() {
        let location = DatabaseLocation::Postgres("postgres://kw:hunter2@db/kw".to_owned());
        assert_eq!(format!("{location:?}"), "Postgres(…)");
    }
}
