//! Version control's rows (docs/vcs.md): the queue of verified webhook deliveries (one row per
//! delivery ID, written with its `vcs.delivery_accepted` entry in one commit, claimed by the
//! worker), the runs deliveries started with their reporting state, and the comments kept on
//! pull requests.

use sqlx::Row;

use super::write::Write;
use super::{Store, StoreError};

/// A delivery to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The provider's delivery ID (`X-GitHub-Delivery`), unique.
    pub delivery_id: String,
    /// `github`.
    pub provider: &'static str,
    /// The event name (`pull_request`, `push`, `ping`).
    pub event: String,
    /// When it was received (Unix seconds).
    pub received_at: i64,
    /// Wall-clock nanoseconds at receipt: the order changes are acted on in (finer than
    /// `received_at`, which two pushes in one second share).
    pub received_order: i64,
    /// The raw signed body.
    pub payload: Vec<u8>,
}

/// Queues `row` as `queued`; a delivery ID seen before is refused as a duplicate.
pub fn insert_delivery(row: &DeliveryRow) -> Write {
    Write::one(
        format!("delivery `{}`", row.delivery_id),
        "INSERT INTO vcs_deliveries (delivery_id, provider, event, received_at, received_order, payload, status, \
         next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $4)",
        vec![
            row.delivery_id.as_str().into(),
            row.provider.into(),
            row.event.as_str().into(),
            row.received_at.into(),
            row.received_order.into(),
            row.payload.clone().into(),
        ],
    )
}

/// A queued delivery, claimed for processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The provider's delivery ID.
    pub delivery_id: String,
    /// The event name.
    pub event: String,
    /// The raw signed body.
    pub payload: Vec<u8>,
    /// When it was received, in nanoseconds (`received_order`): a later change wins.
    pub received_order: i64,
    /// Attempts before this one.
    pub attempts: i64,
    /// This claim's number: settling needs it to still be the latest.
    pub claim: i64,
}

/// How processing a delivery ended.
#[derive(Debug, Clone, Copy)]
pub enum Processed<'a> {
    /// Done: every stack it touched was decided.
    Done,
    /// No more attempts: why the last one failed.
    Failed(&'a str),
    /// Try again at `at`.
    Retry {
        /// When.
        at: i64,
        /// Why this attempt failed.
        error: &'a str,
    },
}

/// A run a version-control event started: where it came from and where it is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcsRunRow {
    /// The run.
    pub run_id: String,
    /// The delivery that started it.
    pub delivery_id: String,
    /// Its stack.
    pub stack: String,
    /// `github`.
    pub provider: &'static str,
    /// The App installation reports go through.
    pub installation_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// The commit its status is set on.
    pub status_sha: String,
    /// The pull request (JSON), if any.
    pub pull_request: Option<String>,
    /// Its number: where the run's comment goes.
    pub pull_request_number: Option<u64>,
}

/// A run whose report is due: its state moved on since it was last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReport {
    /// The run.
    pub run_id: String,
    /// The run's version now: reported once the report succeeds.
    pub version: i64,
    /// The stack.
    pub stack: String,
    /// `github`.
    pub provider: String,
    /// The App installation.
    pub installation_id: i64,
    /// `owner/name`.
    pub repository: String,
    /// The commit its status is set on.
    pub status_sha: String,
    /// The pull request's number, if any: where its comment goes.
    pub pull_request_number: Option<i64>,
    /// Failed attempts at this version so far.
    pub attempts: i64,
    /// This claim's number: settling needs it to still be the latest.
    pub claim: i64,
}

/// Records where run `row.run_id` came from; a delivery that already started a run on the same
/// stack is refused as a duplicate (so the run is not created twice).
pub fn insert_vcs_run(row: &VcsRunRow) -> Write {
    Write::one(
        format!("the run of stack `{}` for delivery `{}`", row.stack, row.delivery_id),
        "INSERT INTO vcs_runs (run_id, delivery_id, stack, provider, installation_id, repository, status_sha, \
         pull_request, pull_request_number) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        vec![
            row.run_id.as_str().into(),
            row.delivery_id.as_str().into(),
            row.stack.as_str().into(),
            row.provider.into(),
            i64::try_from(row.installation_id).unwrap_or(i64::MAX).into(),
            row.repository.as_str().into(),
            row.status_sha.as_str().into(),
            row.pull_request.clone().into(),
            row.pull_request_number.and_then(|n| i64::try_from(n).ok()).into(),
        ],
    )
}

/// Settles `delivery` after its attempt number `delivery.attempts + 1`: done, failed for good,
/// or queued again for its next attempt. Refused (changing nothing) when another claim was made
/// since (this one expired and another worker took it over), so an entry committed with it is not
/// written either.
pub fn settle_delivery(delivery: &ClaimedDelivery, outcome: Processed<'_>, now: i64) -> Write {
    let (delivery_id, before) = (delivery.delivery_id.as_str(), delivery.attempts);
    let (status, next, error) = match outcome {
        Processed::Done => ("done", now, None),
        Processed::Failed(why) => ("failed", now, Some(why.to_owned())),
        Processed::Retry { at, error } => ("queued", at, Some(error.to_owned())),
    };
    let processed_at = (!matches!(outcome, Processed::Retry { .. })).then_some(now);
    Write::one(
        format!("delivery `{delivery_id}` (claimed by another worker meanwhile)"),
        "UPDATE vcs_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, claimed_until = NULL, \
         error = $4, processed_at = $5 WHERE delivery_id = $6 AND status = 'processing' AND claims = $7",
        vec![
            status.into(),
            (before + 1).into(),
            next.into(),
            error.into(),
            processed_at.into(),
            delivery_id.into(),
            delivery.claim.into(),
        ],
    )
}

impl Store {
    /// Claims the oldest due delivery until `claimed_until`: queued and due, or processing with
    /// an expired claim (its processor died). `None` when nothing is due.
    pub async fn claim_vcs_delivery(
        &self,
        now: i64,
        claimed_until: i64,
    ) -> Result<Option<ClaimedDelivery>, StoreError> {
        for _ in 0..4 {
            let row = sqlx::query(
                "SELECT delivery_id, event, payload, received_order, attempts, claims FROM vcs_deliveries \
                 WHERE (status = 'queued' AND next_attempt_at <= $1) OR (status = 'processing' AND claimed_until < $1) \
                 ORDER BY next_attempt_at, received_order LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let claims: i64 = row.try_get("claims")?;
            let delivery = ClaimedDelivery {
                delivery_id: row.try_get("delivery_id")?,
                event: row.try_get("event")?,
                payload: row.try_get("payload")?,
                received_order: row.try_get("received_order")?,
                attempts: row.try_get("attempts")?,
                claim: claims + 1,
            };
            // Only if nobody claimed it meanwhile: the claim count is the version.
            let claimed = sqlx::query(
                "UPDATE vcs_deliveries SET status = 'processing', claimed_until = $1, claims = $2 \
                 WHERE delivery_id = $3 AND claims = $4 \
                 AND (status = 'queued' OR (status = 'processing' AND claimed_until < $5))",
            )
            .bind(claimed_until)
            .bind(delivery.claim)
            .bind(&delivery.delivery_id)
            .bind(claims)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return Ok(Some(delivery));
            }
        }
        Ok(None)
    }

    /// A delivery's status and last error: `(status, error)`.
    pub async fn vcs_delivery_status(&self, delivery_id: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT status, error FROM vcs_deliveries WHERE delivery_id = $1")
            .bind(delivery_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("status")?, row.try_get("error")?))).transpose()
    }

    /// Claims the run whose report is most overdue until `claimed_until`: its version moved
    /// past the one last reported and its next attempt is due.
    pub async fn claim_vcs_report(&self, now: i64, claimed_until: i64) -> Result<Option<DueReport>, StoreError> {
        for _ in 0..4 {
            let row = sqlx::query(
                "SELECT v.run_id, r.version, v.stack, v.provider, v.installation_id, v.repository, v.status_sha, \
                 v.pull_request_number, v.attempts, v.claims FROM vcs_runs v JOIN runs r ON r.id = v.run_id \
                 WHERE v.reported_version < r.version AND v.next_attempt_at <= $1 \
                 AND (v.claimed_until IS NULL OR v.claimed_until < $1) \
                 ORDER BY v.next_attempt_at, r.updated_at LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let due = DueReport {
                run_id: row.try_get("run_id")?,
                version: row.try_get("version")?,
                stack: row.try_get("stack")?,
                provider: row.try_get("provider")?,
                installation_id: row.try_get("installation_id")?,
                repository: row.try_get("repository")?,
                status_sha: row.try_get("status_sha")?,
                pull_request_number: row.try_get("pull_request_number")?,
                attempts: row.try_get("attempts")?,
                claim: row.try_get::<i64, _>("claims")? + 1,
            };
            let claimed = sqlx::query(
                "UPDATE vcs_runs SET claimed_until = $1, claims = $2 WHERE run_id = $3 AND claims = $4 \
                 AND (claimed_until IS NULL OR claimed_until < $5)",
            )
            .bind(claimed_until)
            .bind(due.claim)
            .bind(&due.run_id)
            .bind(due.claim - 1)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// Settles claim `due`: its version reported (or given up on, `error` saying why), or
    /// retried at `retry_at` after `attempts` failures. Changes nothing when another claim was
    /// made since; the reported version never goes back.
    pub async fn settle_vcs_report(
        &self,
        due: &DueReport,
        outcome: Processed<'_>,
        attempts: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (reported, attempts, next, error) = match outcome {
            Processed::Done => (due.version, 0, now, None),
            Processed::Failed(why) => (due.version, 0, now, Some(why)),
            Processed::Retry { at, error } => (0, attempts, at, Some(error)),
        };
        sqlx::query(
            "UPDATE vcs_runs SET reported_version = CASE WHEN reported_version < $1 THEN $1 ELSE reported_version END, \
             attempts = $2, next_attempt_at = $3, claimed_until = NULL, last_error = $4 WHERE run_id = $5 AND claims = $6",
        )
        .bind(reported)
        .bind(attempts)
        .bind(next)
        .bind(error)
        .bind(&due.run_id)
        .bind(due.claim)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The IDs of the comment parts Keyward keeps for `stack` on pull request `number`.
    pub async fn vcs_comment_ids(
        &self,
        provider: &str,
        repository: &str,
        number: i64,
        stack: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT comment_ids FROM vcs_comments WHERE provider = $1 AND repository = $2 AND pull_request = $3 AND stack = $4",
        )
        .bind(provider)
        .bind(repository)
        .bind(number)
        .bind(stack)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(Vec::new()) };
        let ids: String = row.try_get("comment_ids")?;
        serde_json::from_str(&ids).map_err(|e| StoreError::Corrupt(format!("vcs_comments.comment_ids: {e}")))
    }

    /// Keeps `ids` as the comment parts for `stack` on pull request `number`.
    pub async fn set_vcs_comment_ids(
        &self,
        provider: &str,
        repository: &str,
        number: i64,
        stack: &str,
        ids: &[u64],
        now: i64,
    ) -> Result<(), StoreError> {
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO vcs_comments (provider, repository, pull_request, stack, comment_ids, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider, repository, pull_request, stack) \
             DO UPDATE SET comment_ids = excluded.comment_ids, updated_at = excluded.updated_at",
        )
        .bind(provider)
        .bind(repository)
        .bind(number)
        .bind(stack)
        .bind(ids)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether `run_id` is the newest run started for `stack` on pull request `number` (or,
    /// with `None`, on commit `sha`): only the newest run's report edits the comment and the
    /// status (an older run ending later must not overwrite a newer one's). Newest by the
    /// delivery's receipt, which is the order GitHub sent the changes in.
    pub async fn is_newest_vcs_run(&self, due: &DueReport, number: Option<i64>) -> Result<bool, StoreError> {
        const NEWEST: &str = "SELECT v.run_id FROM vcs_runs v JOIN runs r ON r.id = v.run_id \
             JOIN vcs_deliveries d ON d.delivery_id = v.delivery_id \
             WHERE v.provider = $1 AND v.repository = $2 AND v.stack = $3 AND ";
        const ORDER: &str = " ORDER BY d.received_order DESC, r.created_at DESC, r.id DESC LIMIT 1";
        let query = |filter: &str| sqlx::AssertSqlSafe(format!("{NEWEST}{filter}{ORDER}"));
        let base = |sql| sqlx::query(sql).bind(&due.provider).bind(&due.repository).bind(&due.stack);
        let row = match number {
            Some(number) => base(query("v.pull_request_number = $4")).bind(number).fetch_optional(&self.pool).await?,
            None => base(query("v.status_sha = $4")).bind(&due.status_sha).fetch_optional(&self.pool).await?,
        };
        let newest: Option<String> = row.map(|row| row.try_get("run_id")).transpose()?;
        Ok(newest.as_deref() == Some(due.run_id.as_str()))
    }

    /// Whether a delivery received after `received_order` already started a tracked (deploy)
    /// run of `stack`: an older push processed late (retried, or on a slower replica) must not
    /// deploy its older commit over it.
    pub async fn newer_tracked_vcs_run(&self, stack: &str, received_order: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM vcs_runs v JOIN runs r ON r.id = v.run_id \
             JOIN vcs_deliveries d ON d.delivery_id = v.delivery_id \
             WHERE v.stack = $1 AND r.kind = 'deploy' AND d.received_order > $2",
        )
        .bind(stack)
        .bind(received_order)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The runs a delivery started, by stack.
    pub async fn vcs_runs_of_delivery(&self, delivery_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT stack, run_id FROM vcs_runs WHERE delivery_id = $1 ORDER BY stack")
            .bind(delivery_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("stack")?, row.try_get("run_id")?))).collect()
    }
}
