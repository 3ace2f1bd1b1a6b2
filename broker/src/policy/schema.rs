//! The documented input of each policy type, as JSON Schema (`keyward policy schema TYPE`).

use serde_json::{Value, json};

use super::PolicyKind;

fn run_object() -> Value {
    json!({
        "type": "object",
        "description": "The run the decision is about. For CI callers, the fields their token maps to.",
        "properties": {
            "id": {"type": "string"},
            "stack_id": {"type": "string"},
            "stack": {"type": "string"},
            "phase": {"enum": ["plan", "apply"]},
            "repository": {"type": "string"},
            "commit_sha": {"type": "string", "pattern": "^[0-9a-f]{7,64}$"},
            "ref": {"type": "string", "description": "e.g. refs/heads/main"},
            "pull_request": {"type": "integer", "minimum": 1},
            "ticket": {"type": "string"},
            "pull_request_source": {
                "enum": ["github"],
                "description": "where `pull_request` and `ticket` were observed: `github` when the broker saw them in a signed webhook delivery and GitHub's API (docs/vcs.md); absent when they are the submitter's word"
            },
            "triggered_by": {"type": "string"},
            "approved_by": {
                "type": "array", "items": {"type": "string"},
                "description": "the approvals that count, read from the reviews the broker recorded (never from a token or a request); the run's author is never among them"
            }
        },
        "required": ["id", "stack_id", "phase"]
    })
}

fn variables_array() -> Value {
    json!({
        "type": "array",
        "description": "the variables the stack's jobs get (docs/contexts.md): names, never values",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "secret": {"type": "boolean"},
                "from": {"type": "string", "description": "`context:<name>` or `stack:<name>`"},
                "file": {"type": ["string", "null"], "description": "mounted as a file at this path (relative to the configuration directory); null: an environment variable"}
            }
        }
    })
}

/// `input.actor`: who submitted the run or reviewed it just now (docs/access.md).
fn actor_object() -> Value {
    json!({
        "type": ["object", "null"],
        "description": "who acted: an API token, a signed-in person, or the broker itself (the drift scheduler); null when no one acted just now (a run's approval right after its plan, a scan)",
        "properties": {
            "kind": {"enum": ["token", "person", "broker"]},
            "name": {"type": "string", "description": "the token's name, or the person's display name"},
            "subject": {"type": ["string", "null"], "description": "a person's `issuer#subject`; null for a token"},
            "groups": {"type": "array", "items": {"type": "string"}, "description": "a person's groups; empty for a token"},
            "roles": {
                "type": "object",
                "additionalProperties": {"enum": ["viewer", "submitter", "reviewer", "admin"]},
                "description": "space -> the role granted there (it holds in every space below too)"
            },
            "amr": {"type": "array", "items": {"type": "string"}, "description": "how a person authenticated, e.g. [\"pwd\", \"mfa\"]; empty for a token"}
        },
        "required": ["kind", "name", "roles"]
    })
}

fn time_object() -> Value {
    json!({
        "type": "object",
        "description": "When the decision is made. Policies have no clock built-ins; use this.",
        "properties": {
            "unix": {"type": "integer"},
            "rfc3339": {"type": "string"},
            "weekday": {"enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]},
            "hour_utc": {"type": "integer", "minimum": 0, "maximum": 23}
        },
        "required": ["unix"]
    })
}

/// The JSON Schema of `kind`'s input, with the outputs the broker reads in `x-keyward-outputs`.
pub fn input_schema(kind: PolicyKind) -> Value {
    let (properties, required, outputs) = match kind {
        PolicyKind::Credentials => credentials_input(),
        PolicyKind::Run => run_input(),
        PolicyKind::Plan => plan_input(),
        PolicyKind::Scan => scan_input(),
        PolicyKind::Approval => approval_input(),
        PolicyKind::Push => push_input(),
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("https://keyward.dev/schemas/policy-input/{}.json", kind.as_str()),
        "title": format!("Input of the {} policy", kind.package()),
        "type": "object",
        "properties": properties,
        "required": required,
        "x-keyward-package": kind.package(),
        "x-keyward-outputs": outputs
    })
}

/// One policy type's input properties, the required ones, and the outputs the broker reads.
type Section = (Value, Vec<&'static str>, Value);

/// The `keyward.credentials` input: who asks, for which run, which target, and how.
fn credentials_input() -> Section {
    (
        json!({
            "subject": {
                "type": "object",
                "description": "Who asks: a verified subject token, or a job's agent authenticated by its mTLS certificate.",
                "properties": {
                    "kind": {
                        "enum": ["run", "ci", "job"],
                        "description": "a Keyward run token, a trusted external issuer's token, or a job whose agent holds its lease (Credentials RPC)"
                    },
                    "issuer": {"type": "string", "description": "the token's `iss`; for `job`, the agents' SPIFFE trust domain"},
                    "claims": {
                        "type": "object",
                        "description": "every verified claim; for `job`: `sub` (the agent's SPIFFE ID), `agent_id`, `pool`, `job_id`, `fencing_token`; a run token minted through `POST /v1/run-tokens` carries `asserted_by` (the API token that asked for it: its run context is that token's word)"
                    }
                },
                "required": ["kind", "issuer", "claims"]
            },
            "run": run_object(),
            "target": {
                "type": "object",
                "description": "The credential target asked for, from server configuration.",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"enum": ["aws", "vault"]},
                    "access": {"enum": ["read", "write"]},
                    "max_ttl_seconds": {"type": "integer"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "write_subjects": {
                        "type": "array", "items": {"enum": ["job", "run", "ci"]},
                        "description": "the subject kinds the target's configuration lets obtain write credentials (default: only `job`)"
                    }
                },
                "required": ["name", "type", "access"]
            },
            "request": {
                "type": "object",
                "properties": {
                    "ttl_seconds": {"type": "integer"},
                    "mode": {"enum": ["broker", "worker"], "description": "who calls the relying party"}
                }
            },
            "time": time_object()
        }),
        vec!["subject", "run", "target", "time"],
        json!({
            "allow": "boolean; nothing is issued unless true",
            "deny": "set of strings; any message denies, and is shown to the caller and audited",
            "ttl_seconds": "optional positive integer; caps the credential lifetime",
            "session_policy": "optional object; an AWS IAM session policy to attach"
        }),
    )
}

/// The `keyward.run` input: a run about to be accepted.
fn run_input() -> Section {
    (
        json!({
            "run": run_object(),
            "stack": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "repository": {"type": "string"},
                    "path": {"type": "string"}, "branch": {"type": "string"}, "pool": {"type": "string"},
                    "space": {"type": "string", "description": "the space the stack belongs to"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "policies": {"type": "array", "items": {"type": "string"}},
                    "triggers": triggers_array(),
                    "tool": {"enum": ["terraform", "tofu"], "description": "the program its jobs run (docs/agents.md, \"OpenTofu\")"}
                }
            },
            "kind": {
                "type": "string", "enum": ["deploy", "drift", "remediation", "proposed"],
                "description": "`deploy` plans and may apply; `drift` only plans, read-only, and never applies; `remediation` is a deploy a drift check queued (the stack's `drift_remediation` is `plan` or `apply`); `proposed` plans a change not merged yet (a pull request's head, docs/vcs.md) with the plan phase's read-only credentials and never applies"
            },
            "submitted_by": {"type": "string"},
            "actor": actor_object(),
            "variables": variables_array(),
            "time": time_object()
        }),
        vec!["run", "time"],
        json!({
            "allow": "boolean; the run is accepted only if true (a package that defines deny but no allow is treated as allowing what it does not deny)",
            "deny": "set of strings; any message refuses the run",
            "warn": "set of strings; shown, not blocking"
        }),
    )
}

/// The `keyward.plan` input: a run's plan, as `terraform show -json` prints it.
fn plan_input() -> Section {
    (
        json!({
            "run": run_object(),
            "plan": {"type": "object", "description": "the output of `terraform show -json <planfile>`"},
            "scans": scans_object(),
            "variables": variables_array(),
            "time": time_object()
        }),
        vec!["run", "plan", "time"],
        json!({
            "allow": "boolean; the plan passes only if true (a package that defines deny but no allow is treated as allowing what it does not deny)",
            "deny": "set of strings; any message fails the plan",
            "warn": "set of strings; shown, not blocking"
        }),
    )
}

/// The `keyward.scan` input: what a plan job's security scanners found in the checked-out code,
/// before `init`.
fn scan_input() -> Section {
    let (mut properties, _, _) = run_input();
    if let Some(object) = properties.as_object_mut() {
        object.insert("scans".into(), scans_object());
    }
    (
        properties,
        vec!["run", "stack", "scans", "time"],
        json!({
            "allow": "boolean; the job goes on to `init` only if true (a package that defines deny but no allow is treated as allowing what it does not deny)",
            "deny": "set of strings; any message stops the job before `init` and fails the run",
            "warn": "set of strings; shown in the job's log and on the run, not blocking"
        }),
    )
}

/// `input.scans`: per scanner the stack names, what it found (docs/scans.md). In `keyward.plan`,
/// the plan job's scan (`null` for a stack that is not scanned).
fn scans_object() -> Value {
    json!({
        "type": ["object", "null"],
        "properties": {
            "checkov": {
                "type": "object",
                "properties": {
                    "version": {"type": "string"},
                    "passed": {"type": "integer"},
                    "failed": {"type": "integer", "description": "every failed check, listed or not"},
                    "skipped": {"type": "integer"},
                    "parsing_errors": {"type": "integer", "description": "files Checkov could not parse, so did not check"},
                    "failed_checks": {
                        "type": "array",
                        "description": "at most 500 failed checks",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string", "description": "e.g. `CKV_AWS_145`"},
                                "name": {"type": "string"},
                                "resource": {"type": "string", "description": "e.g. `aws_s3_bucket.logs`"},
                                "file": {"type": "string", "description": "relative to the configuration's directory"},
                                "lines": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                                "severity": {"type": ["string", "null"]},
                                "guideline": {"type": ["string", "null"]}
                            },
                            "required": ["id", "resource", "file"]
                        }
                    }
                },
                "required": ["passed", "failed", "failed_checks"]
            }
        }
    })
}

/// `input.stack.triggers`.
fn triggers_array() -> Value {
    json!({
        "type": "array", "items": {"type": "string"},
        "description": "the stack's trigger globs (relative to the repository root): the changed files that concern it; empty: those under `path` (docs/vcs.md)"
    })
}

/// The `keyward.push` input: a pull request or push that touches a stack (docs/vcs.md).
fn push_input() -> Section {
    let (run, _, _) = run_input();
    let pull_request = json!({
        "type": "object",
        "description": "for `pull_request` events, the event's pull request; for a push, the merged pull request the push came from, when the broker found one (else absent). Observed from the signed webhook and GitHub's API, never from a caller.",
        "properties": {
            "number": {"type": "integer", "minimum": 1},
            "title": {"type": "string", "description": "at most 1024 characters, control characters removed"},
            "author": {"type": "string"},
            "base": {"type": "string", "description": "the branch it merges into"},
            "head": {"type": "string", "description": "the branch it merges from"},
            "head_sha": {"type": "string"},
            "url": {"type": "string"},
            "draft": {"type": "boolean"},
            "fork": {"type": "boolean", "description": "its head is in another repository (a fork, or a fork since deleted): proposing it would run outside code with the stack's credentials"},
            "merged": {"type": "boolean"},
            "labels": {"type": "array", "items": {"type": "string"}, "description": "at most 100"},
            "ticket": {"type": "string", "description": "parsed from the title or branch by the configured pattern, when it matched"}
        },
        "required": ["number", "title", "author", "base", "head", "head_sha", "url", "draft", "fork", "merged", "labels"]
    });
    (
        json!({
            "event": {"enum": ["pull_request", "push"]},
            "action": {"type": "string", "description": "`pull_request` events: `opened`, `synchronize`, `reopened`, `ready_for_review`, `closed`, … (absent for a push)"},
            "repository": {"type": "string", "description": "`owner/name`"},
            "sender": {"type": "string", "description": "the GitHub login that caused the event"},
            "stack": run.get("stack").cloned().unwrap_or_default(),
            "changed_files": {
                "type": "array", "items": {"type": "string"},
                "description": "the changed files that concern this stack (under its path, or matching its triggers)"
            },
            "pull_request": pull_request,
            "push": {
                "type": "object",
                "description": "push events only",
                "properties": {
                    "ref": {"type": "string", "description": "e.g. refs/heads/main, refs/tags/v1"},
                    "branch": {"type": "string", "description": "the ref without refs/heads/ (absent for a tag)"},
                    "before": {"type": "string"},
                    "after": {"type": "string"},
                    "created": {"type": "boolean"},
                    "deleted": {"type": "boolean"},
                    "forced": {"type": "boolean"}
                },
                "required": ["ref", "before", "after", "created", "deleted", "forced"]
            }
        }),
        vec!["event", "repository", "sender", "stack", "changed_files"],
        json!({
            "propose": "boolean; plan the pull request's head as a proposed run (read-only targets, never applied)",
            "track": "boolean; run the stack on the pushed commit as a normal run (plan, approval, apply); `propose` and `track` both true is an error, and ignored",
            "reasons": "set of strings; why, shown on the pull request and audited (an ignore without reasons says so)"
        }),
    )
}

/// The `keyward.approval` input: the reviews recorded for a run.
fn approval_input() -> Section {
    let mut run = run_object();
    if let Some(properties) = run.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert(
            "kind".into(),
            json!({"enum": ["deploy", "remediation"], "description": "`remediation`: queued by a drift check that found drift"}),
        );
        properties.insert(
            "remediation".into(),
            json!({"enum": ["plan", "apply"], "description": "remediation runs: the stack's drift_remediation (`plan`: always reviewed; `apply`: may be approved without review)"}),
        );
    }
    (
        json!({
            "run": run,
            "stack": {"type": "object", "properties": {"name": {"type": "string"}, "labels": {"type": "object"}, "space": {"type": "string"}, "triggers": triggers_array()}},
            "approvals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "by": {"type": "string"},
                        "decision": {"enum": ["approve", "reject"]},
                        "at": {"type": "integer"},
                        "comment": {"type": "string"},
                        "author": {"type": "boolean", "description": "the reviewer submitted the run"},
                        "counted": {"type": "boolean", "description": "false for the author's own approval, which never counts"},
                        "reviewer": {
                            "type": ["object", "null"],
                            "description": "who reviewed, as verified at review time (null for reviews recorded before identities were)",
                            "properties": {
                                "kind": {"enum": ["person", "token", "broker"]},
                                "name": {"type": "string"},
                                "subject": {"type": ["string", "null"], "description": "a person's `issuer#subject`"},
                                "groups": {"type": "array", "items": {"type": "string"}},
                                "amr": {"type": "array", "items": {"type": "string"}, "description": "how a person authenticated (`mfa`)"},
                                "role": {"enum": ["viewer", "submitter", "reviewer", "admin", null], "description": "the role held in the stack's space (its own or inherited)"}
                            }
                        }
                    },
                    "required": ["by", "decision", "author", "counted"]
                }
            },
            "target_labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "actor": actor_object(),
            "time": time_object()
        }),
        vec!["run", "approvals", "time"],
        json!({
            "approve": "boolean; the run may apply",
            "reject": "set of strings; the run is rejected",
            "pending": "set of strings; while neither, what the run waits for (shown by `run show` and `--wait`)"
        }),
    )
}
