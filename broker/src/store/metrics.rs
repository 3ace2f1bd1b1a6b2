//! The counts `/metrics` reads from the database at scrape time: runs, jobs and agents by state.
//!
//! One `GROUP BY` each, over an index that leads with `state` (`runs_by_state`, `jobs_by_lease`)
//! or over the agents table, which holds one row per enrolled agent. The runs count scans the
//! whole `runs_by_state` index, so it grows with run history; the caller bounds it with a timeout.

use sqlx::Row as _;

use super::{Store, StoreError};

impl Store {
    /// Runs by state: `(state, runs)`.
    pub async fn run_states(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.count_by_state("SELECT state, COUNT(*) AS n FROM runs GROUP BY state").await
    }

    /// Jobs waiting for an agent or held by one: `(state, jobs)`.
    pub async fn active_job_states(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.count_by_state("SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'leased') GROUP BY state")
            .await
    }

    /// Enrolled agents by state: `(state, agents)`.
    pub async fn agent_states(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.count_by_state("SELECT state, COUNT(*) AS n FROM agents GROUP BY state").await
    }

    async fn count_by_state(&self, sql: &'static str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("state")?, row.try_get("n")?))).collect()
    }
}
