//! The protocol's messages to and from the broker's own types, in one place: what the hub tells
//! an agent becomes a `BrokerMessage`, an agent's `Hello` and `JobResult` become what
//! [`crate::agents`] works with. Text an agent reports is bounded here before anything keeps it.

use keyward_proto::agent_v1::{
    BrokerMessage, Cancel, Drain, Hello, JobAssignment, JobResult, LogReceipt, broker_message,
};
use tonic::Status;

use super::status;
use crate::agents::hub::{Outbound, Receipt};
use crate::agents::work::{self, Finished, MAX_CAPACITY};
use crate::runs::{Drift, JobOutcome, Lease};

/// Longest self-description field (version, isolation) an agent may report.
const MAX_REPORTED: usize = 64;
/// Longest error text an agent may report for a job.
const MAX_ERROR: usize = 4096;

/// What the work stream sends for `outbound`: a message, or the status that ends the stream.
pub(super) fn outbound(outbound: Outbound) -> Result<BrokerMessage, Status> {
    let kind = match outbound {
        Outbound::Assign(lease) => broker_message::Kind::Assignment(assignment(&lease)),
        Outbound::Cancel { job_id, reason } => broker_message::Kind::Cancel(Cancel { job_id, reason }),
        Outbound::Drain { reason } => broker_message::Kind::Drain(Drain { reason }),
        Outbound::Receipt(receipt) => broker_message::Kind::LogReceipt(log_receipt(receipt)),
        Outbound::Disconnect(why) => return Err(status::disconnect(&why)),
    };
    Ok(BrokerMessage { kind: Some(kind) })
}

/// The assignment of the job `lease` holds.
fn assignment(lease: &Lease) -> JobAssignment {
    JobAssignment {
        job_id: lease.job_id.clone(),
        run_id: lease.run_id.clone(),
        stack_id: lease.stack.clone(),
        phase: lease.phase.clone(),
        repository: lease.repository.clone(),
        commit_sha: lease.commit_sha.clone(),
        path: lease.path.clone(),
        fencing_token: u64::try_from(lease.fencing_token).unwrap_or_default(),
        lease_expires_unix: lease.lease_expires_at,
        deadline_unix: 0,
        credential_targets: lease.credential_targets.clone(),
        plan_sha256: lease.plan_sha256.clone().unwrap_or_default(),
        run_kind: lease.kind.as_str().to_owned(),
        source_credentials: lease.source_credentials,
    }
}

fn log_receipt(receipt: Receipt) -> LogReceipt {
    LogReceipt {
        job_id: receipt.job_id,
        fencing_token: receipt.fencing_token,
        seq: receipt.seq,
        accepted: receipt.refused.is_none(),
        reason: receipt.refused.unwrap_or_default(),
    }
}

/// An agent's `Hello`, checked and bounded.
pub(super) fn hello(hello: Hello) -> Result<work::Hello, Status> {
    if hello.capacity == 0 || hello.capacity > MAX_CAPACITY {
        return Err(Status::invalid_argument(format!("capacity must be 1-{MAX_CAPACITY}")));
    }
    let terraform = bounded(&hello.terraform_version);
    Ok(work::Hello {
        version: bounded(&hello.agent_version),
        capacity: usize::try_from(hello.capacity).unwrap_or(1),
        terraform_version: Some(terraform).filter(|v| !v.is_empty()),
        isolation: bounded(&hello.isolation),
    })
}

/// A job's end as its agent reports it, its error text bounded.
pub(super) fn finished(result: JobResult) -> Finished {
    let outcome = if let (true, Some(drift)) = (result.success, result.drift) {
        JobOutcome::Checked(Drift { drifted: drift.drifted, summary: drift.summary })
    } else if result.success {
        JobOutcome::Succeeded
    } else {
        let mut error = result.error;
        error.truncate(error.floor_char_boundary(MAX_ERROR));
        JobOutcome::Failed(if error.is_empty() { "the agent reported a failure".to_owned() } else { error })
    };
    Finished {
        job_id: result.job_id,
        fencing_token: result.fencing_token,
        final_log_digest: result.final_log_digest,
        log_chunks: result.log_chunks,
        outcome,
        layers: result.isolation_layers,
    }
}

/// An agent-reported string cut to [`MAX_REPORTED`] printable characters.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_REPORTED).collect()
}
