//! Stacks, runs, reviews, jobs and saved plans: reading them, and the guarded writes that change
//! them. A change is never executed here: `crate::runs` puts the write in an audit append with
//! the entry that records it, and the audit writer executes both in one transaction
//! ([`super::write`]). Each write carries the condition it was decided on (the run's version,
//! the job's state and fencing token), so a change decided on a state that moved on does nothing.

use keyward_proto::claims::Phase;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::drift::DRIFT_COLUMNS;
use super::write::Write;
use super::{Store, StoreError};

/// A stored stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackRow {
    /// Unique name (its ID).
    pub name: String,
    /// Git repository URL.
    pub repository: String,
    /// Directory of the Terraform configuration inside the repository (`""` = the root).
    pub path: String,
    /// Default branch.
    pub branch: String,
    /// Worker pool that runs its jobs.
    pub pool: String,
    /// JSON array of target IDs for plans.
    pub plan_targets: String,
    /// JSON array of target IDs for applies.
    pub apply_targets: String,
    /// JSON object of labels.
    pub labels: String,
    /// JSON array of attached policy names.
    pub policies: String,
    /// Whether the broker keeps its Terraform state.
    pub managed_state: bool,
    /// JSON object of lifecycle hooks (point → list of commands).
    pub hooks: String,
    /// JSON array of the security scanners its plan jobs run (`["checkov"]`).
    pub scanners: String,
    /// The program its jobs run: `terraform` or `tofu`.
    pub tool: String,
    /// JSON array of trigger globs (which changed files concern it; `[]`: those under `path`).
    pub triggers: String,
    /// The space it belongs to.
    pub space: String,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
    /// Bumped by every update.
    pub version: i64,
    /// The last update's time.
    pub updated_at: Option<i64>,
    /// Who updated it last.
    pub updated_by: Option<String>,
    /// Its drift schedule, a cron expression (UTC); `None`: off.
    pub drift_schedule: Option<String>,
    /// What to do about drift once found: `off`, `plan` or `apply`.
    pub drift_remediation: String,
    /// When the drift schedule was last set or changed.
    pub drift_schedule_set_at: Option<i64>,
    /// The last fire time of the schedule the scheduler handled.
    pub last_drift_check_at: Option<i64>,
    /// What the scheduler did then.
    pub last_drift_check: Option<String>,
    /// Its drift state (`None`: never checked). Read with the stack; written by drift checks.
    pub drift: Option<super::drift::DriftRow>,
}

impl StackRow {
    /// A stack as created: version 1, never updated, no drift schedule, never checked.
    pub fn created(spec: NewStack, created_at: i64, created_by: String) -> Self {
        let NewStack {
            name,
            repository,
            path,
            branch,
            pool,
            plan_targets,
            apply_targets,
            labels,
            policies,
            managed_state,
            hooks,
            scanners,
            tool,
            triggers,
            space,
        } = spec;
        Self {
            name,
            repository,
            path,
            branch,
            pool,
            plan_targets,
            apply_targets,
            labels,
            policies,
            managed_state,
            hooks,
            scanners,
            tool,
            triggers,
            space,
            created_at,
            created_by,
            version: 1,
            updated_at: None,
            updated_by: None,
            drift_schedule: None,
            drift_remediation: "off".to_owned(),
            drift_schedule_set_at: None,
            last_drift_check_at: None,
            last_drift_check: None,
            drift: None,
        }
    }
}

/// What a stack is made of, its lists and maps as JSON text: what creating and updating write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStack {
    /// Unique name (its ID).
    pub name: String,
    /// Git repository URL.
    pub repository: String,
    /// Directory of the Terraform configuration inside the repository.
    pub path: String,
    /// Default branch.
    pub branch: String,
    /// Worker pool.
    pub pool: String,
    /// JSON array of target IDs for plans.
    pub plan_targets: String,
    /// JSON array of target IDs for applies.
    pub apply_targets: String,
    /// JSON object of labels.
    pub labels: String,
    /// JSON array of attached policy names.
    pub policies: String,
    /// Whether the broker keeps its Terraform state.
    pub managed_state: bool,
    /// JSON object of lifecycle hooks.
    pub hooks: String,
    /// JSON array of security scanners.
    pub scanners: String,
    /// `terraform` or `tofu`.
    pub tool: String,
    /// JSON array of trigger globs.
    pub triggers: String,
    /// The space it belongs to (fixed at creation).
    pub space: String,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Run ID.
    pub id: String,
    /// Stack name.
    pub stack: String,
    /// State name.
    pub state: String,
    /// Bumped by every change.
    pub version: i64,
    /// The commit, 40 hex characters.
    pub commit_sha: String,
    /// A branch whose head was the commit at submit, if any.
    pub git_ref: Option<String>,
    /// Pull request number.
    pub pull_request: Option<i64>,
    /// Change ticket.
    pub ticket: Option<String>,
    /// Where `pull_request` and `ticket` were observed (`github`: a signed webhook delivery and
    /// GitHub's API); `None` when they are the submitter's word.
    pub pull_request_source: Option<String>,
    /// Who submitted it.
    pub triggered_by: String,
    /// Why it is in its state (a failure, a rejection), if anything needs saying.
    pub detail: Option<String>,
    /// Submission time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// `deploy` or `drift` ([`crate::runs::RunKind`]).
    pub kind: String,
    /// Drift runs: whether the check found drift, once it ran.
    pub drift: Option<bool>,
}

/// One person's review of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    /// The reviewer (API token name).
    pub reviewer: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// What they said.
    pub comment: Option<String>,
    /// When.
    pub at: i64,
    /// Who, as verified then (JSON: kind, name, subject, groups, amr, role in the stack's space);
    /// `None` for reviews recorded before reviewers' identities were.
    pub identity: Option<String>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Job ID.
    pub id: String,
    /// Its run.
    pub run_id: String,
    /// Plan or apply (a row naming anything else is corrupt, and refused on read).
    pub phase: Phase,
    /// Pool that may run it.
    pub pool: String,
    /// `queued`, `leased`, `succeeded`, `failed`, `canceled`, `interrupted`.
    pub state: String,
    /// How many times it was leased.
    pub attempt: i64,
    /// The agent holding (or last holding) it.
    pub agent_id: Option<String>,
    /// Grows with every lease.
    pub fencing_token: i64,
    /// When the current lease ends.
    pub lease_expires_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// The digest of its log's last chunk, sealed when its lease holder reported its end.
    pub log_digest: Option<Vec<u8>>,
    /// How many chunks that log has (set with `log_digest`).
    pub log_chunks: Option<i64>,
    /// How the agent that leased it isolates jobs.
    pub isolation: Option<String>,
    /// The sandbox layers its processes ran under (JSON array), as reported with its end.
    pub layers: Option<String>,
}

/// A run's saved plan, as far as the run's lifecycle needs it (never the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    /// The plan job that made it.
    pub job_id: String,
    /// SHA-256 of the file.
    pub sha256: Vec<u8>,
    /// The policy's deny messages (JSON array).
    pub deny: String,
}

/// A run's saved plan file as it rests: sealed under the KEK (`runs::seal_context`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPlanRow {
    /// The plan job that made it.
    pub job_id: String,
    /// SHA-256 of the file.
    pub sha256: Vec<u8>,
    /// The sealed file.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedPlanRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedPlanRow").field("job_id", &self.job_id).field("sealed_len", &self.sealed.len()).finish()
    }
}

/// A stack with its drift state: `{STACK_SELECT} WHERE …` or `ORDER BY …`.
const STACK_SELECT: &str = "SELECT s.name, s.repository, s.path, s.branch, s.pool, s.plan_targets, \
     s.apply_targets, s.labels, s.policies, s.managed_state, s.hooks, s.scanners, s.tool, s.triggers, s.space, s.created_at, s.created_by, s.version, s.updated_at, s.updated_by, \
     s.drift_schedule, s.drift_remediation, s.drift_schedule_set_at, s.last_drift_check_at, s.last_drift_check";
/// Which runs a list shows: each field given must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// The stack's.
    pub stack: Option<String>,
    /// In this state (`planned`, `finished`…).
    pub state: Option<String>,
    /// Of this kind (`deploy`, `drift`, `proposed`…).
    pub kind: Option<String>,
    /// For this pull request number.
    pub pull_request: Option<i64>,
    /// Submitted by (a token's name, a person's `issuer#subject`).
    pub triggered_by: Option<String>,
}

impl RunFilter {
    /// Only `stack`'s runs, when given.
    pub fn stack(stack: Option<&str>) -> Self {
        Self { stack: stack.map(str::to_owned), ..Self::default() }
    }
}

const RUN_COLUMNS: &str = "id, stack, state, version, commit_sha, git_ref, pull_request, ticket, triggered_by, \
                           detail, created_at, updated_at, kind, drift, pull_request_source";
pub(super) const JOB_COLUMNS: &str = "id, run_id, phase, pool, state, attempt, agent_id, fencing_token, lease_expires_at, error, created_at, \
     log_digest, log_chunks, isolation, layers";

fn stack_from(row: &AnyRow) -> Result<StackRow, StoreError> {
    Ok(StackRow {
        name: row.try_get("name")?,
        repository: row.try_get("repository")?,
        path: row.try_get("path")?,
        branch: row.try_get("branch")?,
        pool: row.try_get("pool")?,
        plan_targets: row.try_get("plan_targets")?,
        apply_targets: row.try_get("apply_targets")?,
        labels: row.try_get("labels")?,
        policies: row.try_get("policies")?,
        managed_state: row.try_get::<i64, _>("managed_state")? != 0,
        hooks: row.try_get("hooks")?,
        scanners: row.try_get("scanners")?,
        tool: row.try_get("tool")?,
        triggers: row.try_get("triggers")?,
        space: row.try_get("space")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
        drift_schedule: row.try_get("drift_schedule")?,
        drift_remediation: row.try_get("drift_remediation")?,
        drift_schedule_set_at: row.try_get("drift_schedule_set_at")?,
        last_drift_check_at: row.try_get("last_drift_check_at")?,
        last_drift_check: row.try_get("last_drift_check")?,
        drift: super::drift::drift_from(row)?,
    })
}

fn run_from(row: &AnyRow) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: row.try_get("id")?,
        stack: row.try_get("stack")?,
        state: row.try_get("state")?,
        version: row.try_get("version")?,
        commit_sha: row.try_get("commit_sha")?,
        git_ref: row.try_get("git_ref")?,
        pull_request: row.try_get("pull_request")?,
        ticket: row.try_get("ticket")?,
        pull_request_source: row.try_get("pull_request_source")?,
        triggered_by: row.try_get("triggered_by")?,
        detail: row.try_get("detail")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        kind: row.try_get("kind")?,
        drift: row.try_get::<Option<i64>, _>("drift")?.map(|drift| drift != 0),
    })
}

pub(super) fn job_from(row: &AnyRow) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        phase: {
            let phase: String = row.try_get("phase")?;
            phase
                .parse()
                .map_err(|e: keyward_proto::claims::UnknownPhase| StoreError::Corrupt(format!("jobs.phase: {e}")))?
        },
        pool: row.try_get("pool")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        agent_id: row.try_get("agent_id")?,
        fencing_token: row.try_get("fencing_token")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        log_digest: row.try_get("log_digest")?,
        log_chunks: row.try_get("log_chunks")?,
        isolation: row.try_get("isolation")?,
        layers: row.try_get("layers")?,
    })
}

impl Store {
    /// The stack called `name`.
    pub async fn stack(&self, name: &str) -> Result<Option<StackRow>, StoreError> {
        let sql = format!(
            "{STACK_SELECT}, {DRIFT_COLUMNS} FROM stacks s LEFT JOIN stack_drift d ON d.stack = s.name WHERE s.name = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(stack_from).transpose()
    }

    /// Every stack, by name.
    pub async fn stacks(&self) -> Result<Vec<StackRow>, StoreError> {
        let sql = format!(
            "{STACK_SELECT}, {DRIFT_COLUMNS} FROM stacks s LEFT JOIN stack_drift d ON d.stack = s.name ORDER BY s.name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(stack_from).collect()
    }

    /// The run `id`.
    pub async fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_from).transpose()
    }

    /// The newest `limit` runs that match `filter`, newest first.
    pub async fn runs(&self, filter: &RunFilter, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        // One parameter per condition, numbered in order; the limit last.
        let mut conditions = Vec::new();
        let mut texts = Vec::new();
        for (column, value) in [
            ("stack", &filter.stack),
            ("state", &filter.state),
            ("kind", &filter.kind),
            ("triggered_by", &filter.triggered_by),
        ] {
            if let Some(value) = value {
                texts.push(value.as_str());
                conditions.push(format!("{column} = ${}", conditions.len() + 1));
            }
        }
        if filter.pull_request.is_some() {
            conditions.push(format!("pull_request = ${}", conditions.len() + 1));
        }
        let limit_param = conditions.len() + 1;
        let filter_sql =
            if conditions.is_empty() { String::new() } else { format!("WHERE {} ", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs {filter_sql}ORDER BY created_at DESC, id DESC LIMIT ${limit_param}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for text in texts {
            query = query.bind(text);
        }
        if let Some(number) = filter.pull_request {
            query = query.bind(number);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(run_from).collect()
    }

    /// A run with its stack's repository and its reviews (oldest first), in one query: what an
    /// exchange of the run's token needs to know who approved it. `None` when there is no such
    /// run.
    pub async fn run_with_reviews(&self, id: &str) -> Result<Option<(RunRow, String, Vec<ReviewRow>)>, StoreError> {
        let columns: Vec<String> = RUN_COLUMNS.split(", ").map(|c| format!("r.{}", c.trim())).collect();
        let sql = format!(
            "SELECT {}, s.repository AS stack_repository, v.reviewer AS review_reviewer, \
             v.decision AS review_decision, v.comment AS review_comment, v.at AS review_at, \
             v.identity AS review_identity \
             FROM runs r LEFT JOIN stacks s ON s.name = r.stack LEFT JOIN run_reviews v ON v.run_id = r.id \
             WHERE r.id = $1 ORDER BY v.at, v.reviewer",
            columns.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&self.pool).await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let run = run_from(first)?;
        let repository: Option<String> = first.try_get("stack_repository")?;
        let mut reviews = Vec::new();
        for row in &rows {
            let reviewer: Option<String> = row.try_get("review_reviewer")?;
            if let Some(reviewer) = reviewer {
                reviews.push(ReviewRow {
                    reviewer,
                    decision: row.try_get("review_decision")?,
                    comment: row.try_get("review_comment")?,
                    at: row.try_get("review_at")?,
                    identity: row.try_get("review_identity")?,
                });
            }
        }
        Ok(Some((run, repository.unwrap_or_default(), reviews)))
    }

    /// A run's reviews, oldest first.
    pub async fn reviews(&self, run_id: &str) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT reviewer, decision, comment, at, identity FROM run_reviews WHERE run_id = $1 ORDER BY at, reviewer",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReviewRow {
                    reviewer: row.try_get("reviewer")?,
                    decision: row.try_get("decision")?,
                    comment: row.try_get("comment")?,
                    at: row.try_get("at")?,
                    identity: row.try_get("identity")?,
                })
            })
            .collect()
    }

    /// A run's jobs, oldest first.
    pub async fn jobs_of(&self, run_id: &str) -> Result<Vec<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id).fetch_all(&self.pool).await?;
        rows.iter().map(job_from).collect()
    }

    /// The job `id`.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_from).transpose()
    }

    /// The oldest `limit` queued jobs of `pool` (of stacks whose tool is `tool`, when given), each
    /// with its stack's tool (`terraform`, `tofu`): candidates for a lease. (Taking one is a guarded write, so two agents reading the
    /// same candidate cannot both get it.)
    pub async fn queued_jobs(
        &self,
        pool: &str,
        tool: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(JobRow, String)>, StoreError> {
        const STACK_TOOL: &str =
            "(SELECT s.tool FROM runs r JOIN stacks s ON s.name = r.stack WHERE r.id = jobs.run_id)";
        // Only the jobs the idle agents can run, when they all run one tool: the oldest jobs of
        // another tool would otherwise fill the window and starve the ones behind them.
        let of_tool = if tool.is_some() { format!(" AND {STACK_TOOL} = $3") } else { String::new() };
        let sql = format!(
            "SELECT {JOB_COLUMNS}, {STACK_TOOL} AS stack_tool FROM jobs \
             WHERE pool = $1 AND state = 'queued'{of_tool} ORDER BY created_at, id LIMIT $2"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pool).bind(limit);
        if let Some(tool) = tool {
            query = query.bind(tool);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let tool: Option<String> = row.try_get("stack_tool")?;
                Ok((job_from(row)?, tool.unwrap_or_default()))
            })
            .collect()
    }

    /// The saved plan of `run_id`, if its plan job submitted one: who made it, its digest, the
    /// policy's denials.
    pub async fn plan(&self, run_id: &str) -> Result<Option<PlanRow>, StoreError> {
        let row = sqlx::query("SELECT job_id, sha256, deny FROM plans WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(PlanRow { job_id: row.try_get("job_id")?, sha256: row.try_get("sha256")?, deny: row.try_get("deny")? })
        })
        .transpose()
    }

    /// The redacted plan JSON of `run_id` and the policy's deny and warn messages (JSON arrays),
    /// if its plan job submitted one.
    pub async fn plan_json(&self, run_id: &str) -> Result<Option<(String, String, String)>, StoreError> {
        let row = sqlx::query("SELECT plan_json, deny, warn FROM plans WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("plan_json")?, row.try_get("deny")?, row.try_get("warn")?))).transpose()
    }

    /// The sealed plan file of `run_id`, for the apply that opens it.
    pub async fn sealed_plan(&self, run_id: &str) -> Result<Option<SealedPlanRow>, StoreError> {
        let row = sqlx::query("SELECT job_id, sha256, plan_file FROM plans WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(SealedPlanRow {
                job_id: row.try_get("job_id")?,
                sha256: row.try_get("sha256")?,
                sealed: row.try_get("plan_file")?,
            })
        })
        .transpose()
    }
}

/// Creates `stack` (the name is unique: a second one is refused as a duplicate).
pub fn insert_stack(stack: &StackRow) -> Write {
    Write::one(
        format!("stack `{}`", stack.name),
        "INSERT INTO stacks (name, repository, path, branch, pool, plan_targets, apply_targets, labels, \
         policies, created_at, created_by, managed_state, hooks, scanners, space, triggers, tool) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        vec![
            stack.name.as_str().into(),
            stack.repository.as_str().into(),
            stack.path.as_str().into(),
            stack.branch.as_str().into(),
            stack.pool.as_str().into(),
            stack.plan_targets.as_str().into(),
            stack.apply_targets.as_str().into(),
            stack.labels.as_str().into(),
            stack.policies.as_str().into(),
            stack.created_at.into(),
            stack.created_by.as_str().into(),
            i64::from(stack.managed_state).into(),
            stack.hooks.as_str().into(),
            stack.scanners.as_str().into(),
            stack.space.as_str().into(),
            stack.triggers.as_str().into(),
            stack.tool.as_str().into(),
        ],
    )
}

/// A stack update: the new spec and drift settings, by whom and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackChange {
    /// Branch, pool, targets and labels after the update (name, repository, path and policies
    /// are kept).
    pub spec: NewStack,
    /// The drift schedule after the update.
    pub drift_schedule: Option<String>,
    /// Remediation after the update.
    pub drift_remediation: String,
    /// When the schedule was set (now, when the update changes it).
    pub drift_schedule_set_at: Option<i64>,
    /// When.
    pub at: i64,
    /// Who.
    pub by: String,
}

/// Updates the stack `name`, if it is still at `version`.
pub fn update_stack(name: &str, version: i64, change: StackChange) -> Write {
    Write::one(
        format!("stack `{name}` (version {version})"),
        "UPDATE stacks SET branch = $1, pool = $2, plan_targets = $3, apply_targets = $4, labels = $5, \
         drift_schedule = $6, drift_remediation = $7, drift_schedule_set_at = $8, updated_at = $9, updated_by = $10, \
         managed_state = $13, hooks = $14, scanners = $15, triggers = $16, tool = $17, version = version + 1 WHERE name = $11 AND version = $12",
        vec![
            change.spec.branch.into(),
            change.spec.pool.into(),
            change.spec.plan_targets.into(),
            change.spec.apply_targets.into(),
            change.spec.labels.into(),
            change.drift_schedule.into(),
            change.drift_remediation.into(),
            change.drift_schedule_set_at.into(),
            change.at.into(),
            change.by.into(),
            name.into(),
            version.into(),
            i64::from(change.spec.managed_state).into(),
            change.spec.hooks.into(),
            change.spec.scanners.into(),
            change.spec.triggers.into(),
            change.spec.tool.into(),
        ],
    )
}

/// Creates `run` as submitted.
pub fn insert_run(run: &RunRow) -> Write {
    Write::one(
        format!("run {}", run.id),
        "INSERT INTO runs (id, stack, state, version, commit_sha, git_ref, pull_request, ticket, \
         triggered_by, detail, created_at, updated_at, kind, pull_request_source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        vec![
            run.id.as_str().into(),
            run.stack.as_str().into(),
            run.state.as_str().into(),
            run.version.into(),
            run.commit_sha.as_str().into(),
            run.git_ref.clone().into(),
            run.pull_request.into(),
            run.ticket.clone().into(),
            run.triggered_by.as_str().into(),
            run.detail.clone().into(),
            run.created_at.into(),
            run.updated_at.into(),
            run.kind.as_str().into(),
            run.pull_request_source.clone().into(),
        ],
    )
}

/// `run` moves to state `next`, if it is still at the version it was read at.
pub fn transition(run: &RunRow, next: &str, detail: Option<String>, now: i64) -> Write {
    Write::one(
        format!("run {} (version {})", run.id, run.version),
        "UPDATE runs SET state = $1, detail = COALESCE($2, detail), version = version + 1, updated_at = $3 \
         WHERE id = $4 AND version = $5",
        vec![next.into(), detail.into(), now.into(), run.id.as_str().into(), run.version.into()],
    )
}

/// Records a drift run's finding (it travels with the run's state change, which is guarded by
/// its version).
pub fn record_drift(run_id: &str, drifted: bool) -> Write {
    Write::one(
        format!("drift of run {run_id}"),
        "UPDATE runs SET drift = $1 WHERE id = $2 AND kind = 'drift'",
        vec![i64::from(drifted).into(), run_id.into()],
    )
}

/// Records `review` of `run_id` (one per reviewer: a second is refused as a duplicate).
pub fn insert_review(run_id: &str, review: &ReviewRow) -> Write {
    Write::one(
        format!("review of run {run_id} by {}", review.reviewer),
        "INSERT INTO run_reviews (run_id, reviewer, decision, comment, at, identity) VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            run_id.into(),
            review.reviewer.as_str().into(),
            review.decision.as_str().into(),
            review.comment.clone().into(),
            review.at.into(),
            review.identity.clone().into(),
        ],
    )
}

/// Queues the `phase` job `job_id` of `run_id` in `pool`.
pub fn queue_job(job_id: &str, run_id: &str, phase: Phase, pool: &str, now: i64) -> Write {
    Write::one(
        format!("{phase} job of run {run_id}"),
        "INSERT INTO jobs (id, run_id, phase, pool, state, attempt, agent_id, fencing_token, lease_expires_at, \
         error, created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', 0, NULL, 0, NULL, NULL, $5, $5)",
        vec![job_id.into(), run_id.into(), phase.as_str().into(), pool.into(), now.into()],
    )
}

/// Cancels every queued or leased job of `run_id` (however many there are).
pub fn cancel_jobs(run_id: &str, now: i64) -> Write {
    Write::any(
        format!("jobs of run {run_id}"),
        "UPDATE jobs SET state = 'canceled', updated_at = $1 WHERE run_id = $2 AND state IN ('queued', 'leased')",
        vec![now.into(), run_id.into()],
    )
}

/// Leases `job`, as read from the queue, to `agent_id` under `fencing_token` until `expires`:
/// the compare-and-set that only one of any number of racing agents wins. The job records the
/// isolation its agent last reported.
pub fn lease_job(job: &JobRow, agent_id: &str, fencing_token: i64, expires: i64, now: i64) -> Write {
    Write::one(
        format!("queued job {}", job.id),
        "UPDATE jobs SET state = 'leased', agent_id = $1, attempt = attempt + 1, fencing_token = $2, \
         lease_expires_at = $3, updated_at = $4, isolation = (SELECT isolation FROM agents WHERE id = $1) \
         WHERE id = $5 AND state = 'queued' AND fencing_token = $6",
        vec![
            agent_id.into(),
            fencing_token.into(),
            expires.into(),
            now.into(),
            job.id.as_str().into(),
            job.fencing_token.into(),
        ],
    )
}

/// A write that holds only while `job`'s lease is still the one it was read with, unexpired at
/// `now`, and its holder is not revoked: it travels with whatever must not commit once the lease
/// has moved on. The agent's state is read in the same statement because a revocation commits
/// before it ends the agent's leases: a request that authenticated just before the revocation
/// must not commit in between.
pub fn lease_guard(job: &JobRow, now: i64) -> Write {
    Write::one(
        format!("lease {} of job {} by an unrevoked agent", job.fencing_token, job.id),
        "UPDATE jobs SET updated_at = updated_at \
         WHERE id = $1 AND state = 'leased' AND agent_id = $2 AND fencing_token = $3 AND lease_expires_at >= $4 \
         AND EXISTS (SELECT 1 FROM agents WHERE agents.id = $2 AND agents.state <> 'revoked')",
        vec![job.id.as_str().into(), job.agent_id.clone().into(), job.fencing_token.into(), now.into()],
    )
}

/// How a lease holder's job ended, as the job row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// `succeeded` or `failed`.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// The digest of its log's last chunk, as verified.
    pub log_digest: Option<Vec<u8>>,
    /// How many chunks its log has.
    pub log_chunks: Option<i64>,
    /// The sandbox layers it ran under (JSON array), if any.
    pub layers: Option<String>,
}

/// Records how `job_id` ended, if `agent_id` still holds its lease `fencing_token`.
pub fn finish_job(job_id: &str, agent_id: &str, fencing_token: i64, end: JobEnd, now: i64) -> Write {
    Write::one(
        format!("lease {fencing_token} of job {job_id}"),
        "UPDATE jobs SET state = $1, error = $2, lease_expires_at = NULL, updated_at = $3, log_digest = $4, \
         log_chunks = $5, layers = $6 WHERE id = $7 AND state = 'leased' AND agent_id = $8 AND fencing_token = $9",
        vec![
            end.state.into(),
            end.error.into(),
            now.into(),
            end.log_digest.into(),
            end.log_chunks.into(),
            end.layers.into(),
            job_id.into(),
            agent_id.into(),
            fencing_token.into(),
        ],
    )
}

/// Ends the lease `job` was read with, without a report from its holder: the job goes to
/// `state` (`queued` again frees it of its agent) with `error` saying why.
pub fn end_lease(job: &JobRow, state: &str, error: String, now: i64) -> Write {
    Write::one(
        format!("lease {} of job {}", job.fencing_token, job.id),
        "UPDATE jobs SET state = $1, agent_id = CASE WHEN $1 = 'queued' THEN NULL ELSE agent_id END, \
         lease_expires_at = NULL, error = $2, updated_at = $3 WHERE id = $4 AND state = 'leased' AND fencing_token = $5",
        vec![state.into(), Some(error).into(), now.into(), job.id.as_str().into(), job.fencing_token.into()],
    )
}

/// A plan job's saved plan, as it is kept: the file sealed, the JSON redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPlan<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The plan job that made it.
    pub job_id: &'a str,
    /// SHA-256 of the file.
    pub sha256: Vec<u8>,
    /// The file, sealed under the KEK.
    pub sealed: Vec<u8>,
    /// `terraform show -json`, its sensitive values replaced.
    pub json: String,
    /// The policy's deny messages (JSON array).
    pub deny: String,
    /// The policy's warnings (JSON array).
    pub warn: String,
}

impl std::fmt::Debug for NewPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPlan").field("run_id", &self.run_id).field("job_id", &self.job_id).finish_non_exhaustive()
    }
}

/// Keeps `plan` as its run's saved plan (a plan job planning again replaces it).
pub fn save_plan(plan: NewPlan<'_>, now: i64) -> Write {
    Write::one(
        format!("the saved plan of run {}", plan.run_id),
        "INSERT INTO plans (run_id, job_id, sha256, plan_file, plan_json, deny, warn, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id) DO UPDATE SET job_id = $2, \
         sha256 = $3, plan_file = $4, plan_json = $5, deny = $6, warn = $7, created_at = $8",
        vec![
            plan.run_id.into(),
            plan.job_id.into(),
            plan.sha256.into(),
            plan.sealed.into(),
            plan.json.into(),
            plan.deny.into(),
            plan.warn.into(),
            now.into(),
        ],
    )
}
