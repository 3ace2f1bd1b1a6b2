//! Databases as an older broker left them: the schema migrated only up to a given version, for
//! tests of what a later migration does to existing rows.

use keyward_broker::store::DatabaseLocation;
use sqlx::SqlSafeStr as _;

use crate::workspace_root;

/// Opens `location` (creating an SQLite file's directory) and applies the broker's migrations
/// numbered below `version`, as a broker of that age would have.
pub async fn database_before(location: &DatabaseLocation, version: i64) -> sqlx::AnyPool {
    let (backend, url) = match location {
        DatabaseLocation::Sqlite(path) => {
            std::fs::create_dir_all(path.parent().expect("a directory")).expect("create the directory");
            ("sqlite", format!("sqlite://{}?mode=rwc", path.display()))
        }
        DatabaseLocation::Postgres(url) => ("postgres", url.clone()),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join("broker/migrations").join(backend))
        .expect("migrations")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    let mut migrations = Vec::new();
    for file in files {
        let name = file.file_stem().and_then(|s| s.to_str()).expect("a file name").to_owned();
        let (number, description) = name.split_once('_').expect("NNNN_name.sql");
        let number: i64 = number.parse().expect("a migration number");
        if number < version {
            let sql = sqlx::AssertSqlSafe(std::fs::read_to_string(&file).expect("read")).into_sql_str();
            let kind = sqlx::migrate::MigrationType::Simple;
            migrations.push(sqlx::migrate::Migration::new(number, description.to_owned().into(), kind, sql, false));
        }
    }
    sqlx::migrate::Migrator::with_migrations(migrations).run(&pool).await.expect("migrate");
    pool
}
