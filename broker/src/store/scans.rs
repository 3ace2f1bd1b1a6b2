//! Rows of plan jobs' security scans (migration 0019): what the scanners found and the
//! `keyward.scan` verdict, one per job, written with the `scan.evaluated` entry.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::write::Write;
use super::{Store, StoreError};

/// A job's scan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobScanRow {
    /// The plan job.
    pub job_id: String,
    /// Its run.
    pub run_id: String,
    /// JSON object: scanner -> report.
    pub reports: String,
    /// JSON array of the policy's deny messages.
    pub deny: String,
    /// JSON array of its warnings.
    pub warn: String,
    /// The policy set that judged it.
    pub policy_digest: String,
    /// When.
    pub created_at: i64,
}

const COLUMNS: &str = "job_id, run_id, reports, deny, warn, policy_digest, created_at";

fn scan_from(row: &AnyRow) -> Result<JobScanRow, StoreError> {
    Ok(JobScanRow {
        job_id: row.try_get("job_id")?,
        run_id: row.try_get("run_id")?,
        reports: row.try_get("reports")?,
        deny: row.try_get("deny")?,
        warn: row.try_get("warn")?,
        policy_digest: row.try_get("policy_digest")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// The scan of `job_id`, if its agent sent one.
    pub async fn job_scan(&self, job_id: &str) -> Result<Option<JobScanRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM job_scans WHERE job_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(scan_from).transpose()
    }

    /// The scans of `run_id`'s jobs, oldest first.
    pub async fn run_scans(&self, run_id: &str) -> Result<Vec<JobScanRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM job_scans WHERE run_id = $1 ORDER BY created_at, job_id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id).fetch_all(&self.pool).await?;
        rows.iter().map(scan_from).collect()
    }
}

/// Keeps a job's first scan (a second one for the job is refused: the first verdict is final).
pub fn save_job_scan(scan: &JobScanRow) -> Write {
    Write::one(
        format!("the scan of job {}", scan.job_id),
        "INSERT INTO job_scans (job_id, run_id, reports, deny, warn, policy_digest, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            scan.job_id.as_str().into(),
            scan.run_id.as_str().into(),
            scan.reports.as_str().into(),
            scan.deny.as_str().into(),
            scan.warn.as_str().into(),
            scan.policy_digest.as_str().into(),
            scan.created_at.into(),
        ],
    )
}
