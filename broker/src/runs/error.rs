//! Why a stack, run or job request was refused, by cause. Which status a cause becomes is the
//! edges' choice (`api/error.rs` for HTTP, `grpc/status.rs` for agents), not this module's.

use super::git::GitError;
use super::plans::{MAX_PLAN_FILE, MAX_PLAN_JSON, SavedPlanError};
use super::spec::SpecError;
use super::state::RunState;
use super::{MAX_COMMENT, MAX_TICKET};
use crate::audit::ChangeError;
use crate::store::StoreError;
use crate::store::write::Refusal;
use keyward_proto::claims::Phase;

/// Why a stack or run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The stack spec is not acceptable; nothing was changed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The stack names a pool that does not exist.
    #[error("unknown pool `{0}`; create it with `keyward pool create {0}`")]
    NoSuchPool(String),
    /// A submission's commit is not a full SHA.
    #[error("invalid commit `{0}`: give the full SHA, 40 lowercase hex characters")]
    BadCommit(String),
    /// A submission's pull request number is 0.
    #[error("invalid pull request number 0")]
    PullRequestZero,
    /// A submission's pull request number does not fit the store.
    #[error("pull request number too large")]
    PullRequestTooLarge,
    /// A submission's ticket is empty, too long or not printable.
    #[error("invalid ticket: 1-{MAX_TICKET} printable characters")]
    BadTicket,
    /// A review's comment is too long.
    #[error("comment longer than {MAX_COMMENT} bytes")]
    CommentTooLong,
    /// A plan was submitted for a job that is not a plan job.
    #[error("job {job} is an {phase} job; only plans submit plans")]
    NotAPlanJob {
        /// The job.
        job: String,
        /// Its phase.
        phase: Phase,
    },
    /// A saved plan was asked for by a job that is not an apply job.
    #[error("job {0} is not an apply job")]
    NotAnApplyJob(String),
    /// A scanned stack's plan job asked for more than its checkout's credentials before sending
    /// its scan.
    #[error("job {0} is scanned before init: send its scan first (docs/scans.md)")]
    ScanFirst(String),
    /// A scanned stack's plan job whose scan was refused asked for credentials.
    #[error("the scan policy refused job {0}'s scan: it gets nothing more")]
    ScanRefused(String),
    /// A scan report that cannot be taken (wrong job, unknown or missing scanner, too large).
    #[error("scan refused: {0}")]
    BadScan(String),
    /// A plan was submitted for a drift check, which keeps none.
    #[error("run {0} is a drift check: it reports what it found and keeps no plan")]
    DriftKeepsNoPlan(String),
    /// A saved plan is empty or too large.
    #[error("a saved plan is 1 byte to {MAX_PLAN_FILE} bytes")]
    PlanFileSize,
    /// A plan's JSON is too large.
    #[error("the plan JSON is larger than {MAX_PLAN_JSON} bytes")]
    PlanJsonTooLarge,
    /// A plan's JSON does not parse.
    #[error("the plan JSON does not parse: {0}")]
    PlanJson(#[source] serde_json::Error),
    /// No stack has this name.
    #[error("no stack named `{0}`")]
    UnknownStack(String),
    /// No run has this ID.
    #[error("no run with ID `{0}`")]
    UnknownRun(String),
    /// No job has this ID.
    #[error("no job with ID `{0}`")]
    UnknownJob(String),
    /// The run has no saved plan to apply.
    #[error("run {0} has no saved plan")]
    NoSavedPlan(String),
    /// The broker holds no credentials for the run's repository.
    #[error("no repository credentials are configured for {0}")]
    NoRepositoryCredentials(String),
    /// The run takes no reviews in its state.
    #[error("run {run} is {state}; reviews are taken only while it is planned")]
    NotReviewable {
        /// The run.
        run: String,
        /// Where it is.
        state: RunState,
    },
    /// The reviewer already reviewed the run.
    #[error("{reviewer} already reviewed run {run}")]
    AlreadyReviewed {
        /// The run.
        run: String,
        /// Who.
        reviewer: String,
    },
    /// The run is already over (finished, failed, canceled, …).
    #[error("run {run} is already {state}")]
    AlreadyOver {
        /// The run.
        run: String,
        /// Its final state.
        state: RunState,
    },
    /// The caller does not hold the job's current lease.
    #[error("job {job} is not leased to {agent} with fencing token {fencing_token} (stale or foreign lease)")]
    NotLeaseHolder {
        /// The job.
        job: String,
        /// The caller.
        agent: String,
        /// The fencing token it showed.
        fencing_token: i64,
    },
    /// The caller's lease of the job ran out.
    #[error("the lease {fencing_token} of job {job} has expired")]
    LeaseExpired {
        /// The job.
        job: String,
        /// The lease.
        fencing_token: i64,
    },
    /// A lease's write was refused by the database for another reason than a moved state.
    #[error("{0}")]
    LeaseWrite(Refusal),
    /// A lease's write came back as a replay, which only token claims can be.
    #[error("unexpected replay outcome")]
    UnexpectedReplay,
    /// A guarded write found the state it was decided on moved on, or its row already there.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A policy said no; the reasons are on record.
    #[error("refused by policy: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// The repository could not be read to resolve the commit.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The store or the audit log failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A saved plan could not be opened for its apply.
    #[error(transparent)]
    SavedPlan(#[from] SavedPlanError),
}
