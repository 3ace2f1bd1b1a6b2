//! The protocol's messages to and from the broker's own types, in one place: what the hub tells
//! an agent becomes a `BrokerMessage` (the phase and run kind become the protocol's enums here
//! and nowhere else), an agent's `Hello` and `JobResult` become what [`crate::agents`] works
//! with. Text an agent reports is bounded here before anything keeps it; an enum the agent left
//! UNSPECIFIED (an agent older than this protocol) is refused with a status that says so.

use keyward_proto::agent_v1::{
    self as wire, BrokerMessage, Cancel, CredentialFile, CredentialsResponse, Drain, Hello, JobAssignment, JobEvent,
    JobResult, LogReceipt, broker_message,
};
use keyward_proto::claims::Phase;
use tonic::Status;

use super::status;
use crate::agents::credentials::JobEnvironment;
use crate::agents::hub::{Outbound, Receipt};
use crate::agents::work::{self, Finished, MAX_CAPACITY};
use crate::runs::tool::{EXEC_ISOLATION, Tool, Tools};
use crate::runs::{Drift, JobOutcome, Lease, RunKind, scans};
use crate::store::DriftCounts;

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
        repository: lease.repository.clone(),
        commit_sha: lease.commit_sha.clone(),
        path: lease.path.clone(),
        fencing_token: u64::try_from(lease.fencing_token).unwrap_or_default(),
        lease_expires_unix: lease.lease_expires_at,
        deadline_unix: 0,
        credential_targets: lease.credential_targets.clone(),
        plan_sha256: lease.plan_sha256.clone().unwrap_or_default(),
        source_credentials: lease.source_credentials,
        job_phase: phase(lease.phase).into(),
        job_run_kind: run_kind(lease.kind).into(),
        managed_state: lease.managed_state,
        hooks: lease
            .hooks
            .iter()
            .map(|hook| wire::Hook {
                point: hook.point.as_str().to_owned(),
                command: hook.command.clone(),
                context: hook.context.clone().unwrap_or_default(),
            })
            .collect(),
        scanners: lease.scanners.iter().map(|scanner| scanner.as_str().to_owned()).collect(),
        tool: tool(lease.tool).into(),
    }
}

/// The protocol's name for `tool`.
fn tool(tool: Tool) -> wire::Tool {
    match tool {
        Tool::Terraform => wire::Tool::Terraform,
        Tool::Tofu => wire::Tool::Tofu,
    }
}

/// The tools an agent reports, with their versions (bounded): a tool this broker does not know
/// (a newer agent) is left out; an agent older than tool reports runs Terraform alone, and an
/// `--exec` agent runs its own command for any stack.
fn tools(reported: &[wire::ToolVersion], runs_exec: bool) -> (Tools, Vec<(Tool, String)>) {
    let known: Vec<(Tool, String)> = reported
        .iter()
        .take(Tool::ALL.len())
        .filter_map(|each| match wire::Tool::try_from(each.tool).ok()? {
            wire::Tool::Terraform => Some((Tool::Terraform, bounded(&each.version))),
            wire::Tool::Tofu => Some((Tool::Tofu, bounded(&each.version))),
            wire::Tool::Unspecified => None,
        })
        .collect();
    let set = if runs_exec {
        Tools::ANY
    } else if reported.is_empty() {
        Tools::TERRAFORM
    } else {
        known.iter().map(|(tool, _)| *tool).collect()
    };
    (set, known)
}

/// A scanner's report as the agent sent it: the scanner's name and its findings, unchecked (the
/// run's stack decides which scanners it takes: [`crate::runs::scans::read_reports`]).
pub(super) fn scan_report(report: wire::ScanReport) -> (String, scans::Report) {
    let text = |s: String| (!s.is_empty()).then_some(s);
    let failed_checks = report
        .findings
        .into_iter()
        .map(|f| scans::Finding {
            id: f.check_id,
            name: f.check_name,
            resource: f.resource,
            file: f.file,
            lines: [f.first_line, f.last_line],
            severity: text(f.severity),
            guideline: text(f.guideline),
        })
        .collect();
    let read = scans::Report {
        version: report.version,
        passed: report.passed,
        failed: report.failed,
        skipped: report.skipped,
        parsing_errors: report.parsing_errors,
        failed_checks,
    };
    (report.scanner, read)
}

/// The protocol's name for `phase`.
fn phase(phase: Phase) -> wire::Phase {
    match phase {
        Phase::Plan => wire::Phase::Plan,
        Phase::Apply => wire::Phase::Apply,
    }
}

/// The protocol's name for `kind`.
fn run_kind(kind: RunKind) -> wire::RunKind {
    match kind {
        // A remediation runs exactly as a deploy does on the agent, and so does a proposed
        // run's plan (it never gets an apply job).
        RunKind::Deploy | RunKind::Remediation | RunKind::Proposed => wire::RunKind::Deploy,
        RunKind::Drift => wire::RunKind::Drift,
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
    let (can_run, tools) = tools(&hello.tools, hello.runs_exec);
    Ok(work::Hello {
        can_run,
        tools,
        version: bounded(&hello.agent_version),
        capacity: usize::try_from(hello.capacity).unwrap_or(1),
        terraform_version: Some(terraform).filter(|v| !v.is_empty()),
        isolation: isolation(hello.job_isolation(), hello.runs_exec)?,
    })
}

/// How an agent isolates jobs, in the words operators read (`agent list`, `run show`, the
/// audit log): the same text agents reported before the protocol had an enum for it.
fn isolation(isolation: wire::Isolation, runs_exec: bool) -> Result<String, Status> {
    let described = match isolation {
        wire::Isolation::Process => "process",
        wire::Isolation::SandboxNetworkNone => "sandbox network=none",
        wire::Isolation::SandboxNetworkHost => "sandbox network=host",
        wire::Isolation::Unspecified => {
            return Err(Status::invalid_argument(
                "Hello does not say how the agent isolates jobs (job_isolation is UNSPECIFIED): an agent older \
                 than this broker's protocol; upgrade the agent",
            ));
        }
    };
    Ok(if runs_exec { format!("{described}{EXEC_ISOLATION}") } else { described.to_owned() })
}

/// What a `JobEvent` says the job's state is, for the log; `None` (logged as malformed) when the
/// agent left it UNSPECIFIED.
pub(super) fn job_state(event: &JobEvent) -> Option<&'static str> {
    match event.job_state() {
        wire::JobState::Unspecified => None,
        wire::JobState::Running => Some("running"),
        wire::JobState::Succeeded => Some("succeeded"),
        wire::JobState::Failed => Some("failed"),
        wire::JobState::Canceled => Some("canceled"),
    }
}

/// A job's end as its agent reports it, its error text bounded.
pub(super) fn finished(result: JobResult) -> Finished {
    let outcome = if let (true, Some(drift)) = (result.success, result.drift) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let counts = DriftCounts {
            to_add: count(drift.to_add),
            to_change: count(drift.to_change),
            to_destroy: count(drift.to_destroy),
            changed_outside: count(drift.changed_outside),
        };
        JobOutcome::Checked(Drift {
            drifted: drift.drifted,
            summary: drift.summary,
            counts,
            addresses: drift.addresses,
        })
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

/// The `Credentials` answer that hands a job `environment`.
pub(super) fn credentials(environment: JobEnvironment) -> CredentialsResponse {
    CredentialsResponse {
        environment: environment.variables,
        expires_unix: environment.expires_at,
        files: environment
            .files
            .into_iter()
            .map(|file| CredentialFile { environment_variable: file.variable, content: file.content })
            .collect(),
    }
}

/// An agent-reported string cut to [`MAX_REPORTED`] printable characters.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_REPORTED).collect()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn hello(isolation: wire::Isolation, runs_exec: bool) -> Hello {
        Hello {
            agent_version: "1.0".into(),
            capacity: 1,
            job_isolation: isolation.into(),
            runs_exec,
            ..Hello::default()
        }
    }

    /// The enum becomes exactly the text agents used to report, which operators and the audit
    /// log read.
    #[test]
    fn isolation_reads_as_it_always_did() -> Result<(), Status> {
        let said = |isolation, runs_exec| super::hello(hello(isolation, runs_exec)).map(|hello| hello.isolation);
        assert_eq!(said(wire::Isolation::Process, false)?, "process");
        assert_eq!(said(wire::Isolation::SandboxNetworkNone, false)?, "sandbox network=none");
        assert_eq!(
            said(wire::Isolation::SandboxNetworkHost, true)?,
            "sandbox network=host, runs --exec (not terraform)"
        );
        assert_eq!(said(wire::Isolation::Process, true)?, "process, runs --exec (not terraform)");
        Ok(())
    }

    /// An agent that does not say (one from before the enum, or a number this broker does not
    /// know) is refused, and told why.
    #[test]
    fn an_unspecified_isolation_is_refused_clearly() {
        let old = Hello { agent_version: "0.9".into(), capacity: 1, ..Hello::default() };
        let unknown = Hello { job_isolation: 99, ..hello(wire::Isolation::Process, false) };
        for refused in [old, unknown] {
            let status = super::hello(refused).err().unwrap_or_else(|| Status::ok("accepted"));
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("UNSPECIFIED") && status.message().contains("upgrade the agent"),
                "{status:?}"
            );
        }
    }

    #[test]
    fn every_phase_and_kind_has_its_own_enum_value() {
        assert_eq!(phase(Phase::Plan), wire::Phase::Plan);
        assert_eq!(phase(Phase::Apply), wire::Phase::Apply);
        assert_eq!(run_kind(RunKind::Deploy), wire::RunKind::Deploy);
        assert_eq!(run_kind(RunKind::Drift), wire::RunKind::Drift);
        assert_eq!(run_kind(RunKind::Remediation), wire::RunKind::Deploy);
        let event = JobEvent { job_state: wire::JobState::Unspecified.into(), ..JobEvent::default() };
        assert_eq!(job_state(&event), None);
        let event = JobEvent { job_state: wire::JobState::Canceled.into(), ..JobEvent::default() };
        assert_eq!(job_state(&event), Some("canceled"));
    }
}
