//! Stacks, runs, reviews and the job queue, on both storage backends, through the broker's own
//! service with the shipped policy library and real git repositories.
//!
//! What must hold: a run refused by `keyward.run` is never queued (and the refusal is on record);
//! bad input changes nothing; of any number of agents racing for a job exactly one gets it; only
//! the current lease holder's report counts; an apply needs the approvals `keyward.approval` asks
//! for, never counting the author's; racing reviews never queue two applies; every change is in
//! the audit log, whose tree stays correct.

use std::sync::Arc;
use std::time::Duration;

use keyward_broker::audit::{AuditLog, ChangeError, Context, kinds};
use keyward_broker::clock::ManualClock;
use keyward_broker::policy::{Outcome, PolicyEngine};
use keyward_broker::runs::{
    Drift, JobOutcome, JobReport, RunError, RunKind, RunState, Runs, StackSpec, Submission, Verdict,
};
use keyward_broker::store::{DatabaseLocation, Store};
use keyward_proto::claims::Phase;
use keyward_tests::audit::Audit;
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::workspace_root;

const T0: i64 = 1_800_000_000;
const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_runs_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    suite(&DatabaseLocation::Sqlite(dir.path().join("keyward.db")), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_runs_and_jobs() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    suite(&DatabaseLocation::Postgres(cluster.database("keyward_runs")), dir.path()).await;
}

fn spec(name: &str, repository: &str) -> StackSpec {
    StackSpec {
        name: name.into(),
        repository: repository.into(),
        path: String::new(),
        branch: "main".into(),
        pool: "default".into(),
        plan_targets: vec![],
        apply_targets: vec![],
        labels: Default::default(),
        policies: vec![],
        managed_state: true,
        hooks: Default::default(),
        scanners: Vec::new(),
        tool: Default::default(),
        triggers: Vec::new(),
        space: "root".into(),
    }
}

fn submission(stack: &str, commit: Option<String>) -> Submission {
    Submission {
        stack: stack.into(),
        commit,
        pull_request: Some(7),
        ticket: Some("CHG-1".into()),
        ..Submission::default()
    }
}

async fn suite(location: &DatabaseLocation, dir: &std::path::Path) {
    let store = Store::open(location).await.unwrap();
    let log = AuditLog::start(store.clone());
    let engine = PolicyEngine::load(&workspace_root().join("policies"), Duration::from_millis(500)).unwrap();
    let kek = Arc::new(keyward_broker::kek::Kek::generate());
    let runs = Runs::new(store.clone(), log, Some(Arc::new(engine)), &[], Arc::new(ManualClock::at(T0)), kek);
    let audit = Audit(store.clone());
    let repo = GitRepo::init(&dir.join("infra"));
    repo.commit("variables.tf", "variable \"x\" {\n  default = 1\n}\n");
    let caller = Context::default;

    // Stacks: created once; a duplicate or a bad one changes nothing.
    let created = runs.create_stack(spec("network", &repo.url()), "admin", caller()).await.unwrap();
    assert_eq!(created.spec.repository, repo.url());
    let duplicate = runs.create_stack(spec("network", &repo.url()), "admin", caller()).await;
    match &duplicate {
        Err(error @ RunError::Change(ChangeError::Duplicate { .. })) => {
            assert_eq!(error.to_string(), "stack `network` already exists");
        }
        other => panic!("expected a duplicate stack, got {other:?}"),
    }
    let bad = runs.create_stack(spec("Bad Name", &repo.url()), "admin", caller()).await;
    assert!(matches!(bad, Err(RunError::Spec(_))), "{bad:?}");
    assert_eq!(audit.count(kinds::STACK_CREATED).await, 1);
    assert_eq!(runs.stacks().await.unwrap().len(), 1);

    // A submission takes the head of the stack's branch and queues a plan job.
    let run = runs.submit(submission("network", None), "alice", caller()).await.unwrap();
    assert_eq!((run.state.as_str(), run.commit_sha.as_str()), ("queued", repo.head().as_str()));
    assert_eq!(run.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(run.jobs.len(), 1);
    assert_eq!((run.jobs[0].phase.as_str(), run.jobs[0].state.as_str()), ("plan", "queued"));
    let created_entries = audit.for_run(&run.id).await;
    assert_eq!(created_entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["created"]);
    assert_eq!(created_entries[0].context["commit_sha"], repo.head());
    assert_eq!(created_entries[0].context["triggered_by"], "alice");

    // Bad input: clear errors, nothing queued, nothing recorded.
    let before = (runs.runs(None, 100).await.unwrap().len(), audit.count(kinds::RUN_REFUSED).await);
    for (bad, what) in [
        (submission("network", Some("0123abc".into())), "full SHA"),
        (submission("network", Some("G".repeat(40))), "full SHA"),
        (Submission { pull_request: Some(0), ..submission("network", None) }, "pull request"),
        (Submission { ticket: Some("x".repeat(500)), ..submission("network", None) }, "ticket"),
    ] {
        let error = runs.submit(bad, "alice", caller()).await.unwrap_err();
        let bad_input = matches!(error, RunError::BadCommit(_) | RunError::PullRequestZero | RunError::BadTicket);
        assert!(bad_input && error.to_string().contains(what), "{what}: {error:?}");
    }
    let unknown = runs.submit(submission("nope", None), "alice", caller()).await.unwrap_err();
    assert!(matches!(unknown, RunError::UnknownStack(ref name) if name == "nope"), "{unknown:?}");
    assert_eq!((runs.runs(None, 100).await.unwrap().len(), audit.count(kinds::RUN_REFUSED).await), before);

    // `keyward.run` refuses a commit that no branch heads: on record, never queued.
    let refused = runs.submit(submission("network", Some(repo.older_commit())), "alice", caller()).await.unwrap_err();
    match refused {
        RunError::Refused(reasons) => assert!(reasons.iter().any(|r| r.contains("branch")), "{reasons:?}"),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    assert_eq!(runs.runs(None, 100).await.unwrap().len(), before.0, "a refused run is never queued");
    assert_eq!(audit.count(kinds::RUN_REFUSED).await, before.1 + 1, "the refusal is on record");
    // A commit that heads another branch records that branch.
    let feature = repo.commit_on_branch("feature", "extra.tf", "# extra\n");
    let on_feature = runs.submit(submission("network", Some(feature.clone())), "alice", caller()).await.unwrap();
    assert_eq!(on_feature.git_ref.as_deref(), Some("refs/heads/feature"));
    runs.cancel(&on_feature.id, "alice", caller()).await.unwrap();

    // Eight agents race for the one queued plan job: exactly one gets it.
    let mut racers = tokio::task::JoinSet::new();
    for agent in 0..8 {
        let runs = runs.clone();
        racers.spawn(async move { runs.lease_next("default", &format!("agent-{agent}"), LEASE).await.unwrap() });
    }
    let leases: Vec<_> = racers.join_all().await.into_iter().flatten().collect();
    assert_eq!(leases.len(), 1, "exactly one agent holds the job: {leases:?}");
    let plan = &leases[0];
    assert_eq!((plan.run_id.as_str(), plan.phase.as_str(), plan.fencing_token), (run.id.as_str(), "plan", 1));
    assert_eq!(runs.run(&run.id).await.unwrap().state, "planning");
    let holder = runs.run(&run.id).await.unwrap().jobs[0].agent_id.clone().unwrap();

    // Only the holder, with the current fencing token, may report.
    for (agent, token) in [("agent-x", 1), (holder.as_str(), 2)] {
        let stale = runs.finish_job(&plan.job_id, agent, token, JobOutcome::Succeeded.into()).await.unwrap_err();
        assert!(matches!(stale, RunError::NotLeaseHolder { .. }), "{stale:?}");
        assert!(stale.to_string().contains("stale or foreign"), "{stale}");
    }
    runs.finish_job(&plan.job_id, &holder, 1, JobOutcome::Succeeded.into()).await.unwrap();
    assert_eq!(runs.run(&run.id).await.unwrap().state, RunState::Planned.as_str(), "waits for approval");

    // The author's own approval does not count (the library's approval policy); a second review
    // by the same person is refused.
    let own = runs.review(&run.id, Verdict::Approve, None, "alice", caller()).await.unwrap();
    assert_eq!((own.approval, own.run.state.as_str()), (Outcome::Pending, "planned"));
    let again = runs.review(&run.id, Verdict::Approve, None, "alice", caller()).await.unwrap_err();
    assert!(matches!(again, RunError::AlreadyReviewed { ref reviewer, .. } if reviewer == "alice"), "{again:?}");
    assert!(again.to_string().contains("already reviewed"), "{again}");
    let approved = runs.review(&run.id, Verdict::Approve, Some("looks right".into()), "bob", caller()).await.unwrap();
    assert_eq!((approved.approval, approved.run.state.as_str()), (Outcome::Approve, "applying"));
    let late = runs.review(&run.id, Verdict::Approve, None, "carol", caller()).await.unwrap_err();
    assert!(matches!(late, RunError::NotReviewable { state: RunState::Applying, .. }), "{late:?}");
    assert!(late.to_string().contains("applying"), "{late}");

    // The apply job runs and finishes the run; a finished run cannot be canceled or reviewed.
    let apply = runs.lease_next("default", "agent-1", LEASE).await.unwrap().expect("the apply job");
    assert_eq!((apply.run_id.as_str(), apply.phase.as_str()), (run.id.as_str(), "apply"));
    runs.finish_job(&apply.job_id, "agent-1", apply.fencing_token, JobOutcome::Succeeded.into()).await.unwrap();
    let finished = runs.run(&run.id).await.unwrap();
    assert_eq!(finished.state, "finished");
    assert_eq!(finished.reviews.iter().map(|r| r.by.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(matches!(
        runs.cancel(&run.id, "alice", caller()).await,
        Err(RunError::AlreadyOver { state: RunState::Finished, .. })
    ));
    let trail: Vec<String> = audit.for_run(&run.id).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        trail,
        [
            "created",
            "leased",
            "state_changed",
            "finished",
            "state_changed",
            "reviewed",
            "reviewed",
            "state_changed",
            "leased",
            "finished",
            "state_changed"
        ],
        "every step of the run is on record"
    );

    // A rejection discards the run.
    let rejected = planned_run(&runs, "ivan").await;
    let outcome = runs.review(&rejected, Verdict::Reject, Some("wrong window".into()), "judy", caller()).await;
    assert_eq!(outcome.unwrap().run.state, "discarded");

    // Racing approvals of one planned run never queue two applies.
    let raced = planned_run(&runs, "dave").await;
    let mut reviewers = tokio::task::JoinSet::new();
    for who in ["erin", "frank", "grace", "heidi"] {
        let (runs, id) = (runs.clone(), raced.clone());
        reviewers.spawn(async move { runs.review(&id, Verdict::Approve, None, who, Context::default()).await });
    }
    let results = reviewers.join_all().await;
    assert!(results.iter().any(Result::is_ok), "{results:?}");
    for result in &results {
        if let Err(error) = result {
            // It read the run before the winner moved it (its write found the version moved on),
            // or after (the run no longer takes reviews).
            let lost = matches!(
                error,
                RunError::Change(ChangeError::Moved { .. } | ChangeError::Duplicate { .. })
                    | RunError::NotReviewable { state: RunState::Applying, .. }
            );
            assert!(lost, "a losing review is a conflict: {error:?}");
        }
    }
    let raced_run = runs.run(&raced).await.unwrap();
    assert_eq!(raced_run.state, "applying");
    assert_eq!(raced_run.jobs.iter().filter(|j| j.phase == Phase::Apply).count(), 1, "one apply job");

    // A canceled run's queued job is never leased.
    let canceled = runs.submit(submission("network", None), "ken", caller()).await.unwrap();
    runs.cancel(&canceled.id, "ken", caller()).await.unwrap();
    let after = runs.run(&canceled.id).await.unwrap();
    assert_eq!((after.state.as_str(), after.jobs[0].state.as_str()), ("canceled", "canceled"));
    let next = runs.lease_next("default", "agent-1", LEASE).await.unwrap();
    assert_eq!(next.map(|l| l.run_id), Some(raced.clone()), "only the raced run's apply is left");
    assert_eq!(runs.lease_next("default", "agent-1", LEASE).await.unwrap(), None);

    // Drift checks: a plan job that reports what it found, finishes its run with it, never
    // queues an apply (the library's approval policy would not be asked), and records the
    // sandbox layers the agent reported. An agent that only says "succeeded" did not check.
    let drift = Submission { kind: RunKind::Drift, ..submission("network", None) };
    for (reported, state, found) in [
        (
            JobOutcome::Checked(Drift { drifted: true, summary: "1 to add\u{7}".into(), ..Drift::default() }),
            "finished",
            Some(true),
        ),
        (JobOutcome::Checked(Drift::default()), "finished", Some(false)),
        (JobOutcome::Succeeded, "failed", None),
        (JobOutcome::Failed("terraform plan exited with 1".into()), "failed", None),
    ] {
        let run = runs.submit(drift.clone(), "olga", caller()).await.unwrap();
        assert_eq!((run.kind.as_str(), run.drift), ("drift", None));
        let lease = runs.lease_next("default", "agent-1", LEASE).await.unwrap().expect("the drift run's plan job");
        assert_eq!(
            (lease.run_id.as_str(), lease.phase.as_str(), lease.kind),
            (run.id.as_str(), "plan", RunKind::Drift)
        );
        let layers = vec!["no_new_privs".to_owned(), "seccomp\ndeny".to_owned()];
        let report = JobReport { outcome: reported.clone(), log: None, layers };
        runs.finish_job(&lease.job_id, "agent-1", lease.fencing_token, report).await.unwrap();
        let ended = runs.run(&run.id).await.unwrap();
        assert_eq!((ended.state.as_str(), ended.drift), (state, found), "{reported:?}: {ended:?}");
        assert_eq!(ended.jobs.len(), 1, "never an apply: {ended:?}");
        assert_eq!(ended.jobs[0].layers.as_deref(), Some(&["no_new_privs".to_owned(), "seccompdeny".to_owned()][..]));
        let detail = ended.detail.unwrap_or_default();
        match found {
            Some(true) => assert_eq!(detail, "drift: 1 to add"),
            Some(false) => assert!(detail.starts_with("no drift"), "{detail}"),
            None => assert!(detail.starts_with("plan failed"), "{detail}"),
        }
        let finished = audit.for_run(&run.id).await.into_iter().find(|e| e.kind == "finished").unwrap();
        let details: serde_json::Value = serde_json::from_str(&finished.details).unwrap();
        assert_eq!(details["drift"].as_bool(), found, "{details}");
    }
    // A deploy's job that claims a drift check is not believed.
    let deploy = runs.submit(submission("network", None), "olga", caller()).await.unwrap();
    let lease = runs.lease_next("default", "agent-1", LEASE).await.unwrap().unwrap();
    let claimed = JobOutcome::Checked(Drift::default());
    runs.finish_job(&lease.job_id, "agent-1", lease.fencing_token, claimed.into()).await.unwrap();
    let ended = runs.run(&deploy.id).await.unwrap();
    assert_eq!((ended.state.as_str(), ended.drift, ended.jobs.len()), ("failed", None, 1), "{ended:?}");

    // Batches (one dispatch round leasing to many idle agents at once): five queued plans, two
    // replicas each offering the same three agents plus two of their own. Every job is leased
    // exactly once, to the agent its lease names, and an empty queue says so.
    let agents = |replica: &str| -> Vec<String> {
        ["a", "b", "c"].iter().map(|a| format!("agent-{a}")).chain((0..2).map(|i| format!("{replica}-{i}"))).collect()
    };
    assert_eq!(runs.lease_batch("default", &agents("r1"), LEASE).await.unwrap(), None, "nothing queued");
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(runs.submit(submission("network", None), "lena", caller()).await.unwrap().id);
    }
    let (r1, r2) = (agents("r1"), agents("r2"));
    let (one, two) = tokio::join!(runs.lease_batch("default", &r1, LEASE), runs.lease_batch("default", &r2, LEASE));
    let leased: Vec<_> = one.unwrap().unwrap().into_iter().chain(two.unwrap().unwrap()).collect();
    let mut jobs: Vec<&str> = leased.iter().map(|(_, lease)| lease.run_id.as_str()).collect();
    jobs.sort_unstable();
    let mut wanted: Vec<&str> = queued.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(jobs, wanted, "each queued plan leased exactly once: {leased:?}");
    for (agent, lease) in &leased {
        let job = runs.job_row(&lease.job_id).await.unwrap();
        assert_eq!((job.state.as_str(), job.agent_id.as_deref()), ("leased", Some(agent.as_str())));
    }
    assert_eq!(runs.lease_batch("default", &agents("r1"), LEASE).await.unwrap(), None);

    audit.check_tree().await;
}

/// Submits a run by `author` and carries it through its plan.
async fn planned_run(runs: &Runs, author: &str) -> String {
    let run = runs.submit(submission("network", None), author, Context::default()).await.unwrap();
    let lease = runs.lease_next("default", "agent-1", LEASE).await.unwrap().expect("plan job");
    assert_eq!(lease.run_id, run.id);
    runs.finish_job(&lease.job_id, "agent-1", lease.fencing_token, JobOutcome::Succeeded.into()).await.unwrap();
    assert_eq!(runs.run(&run.id).await.unwrap().state, "planned");
    run.id
}

/// A run whose stored `kind` does not parse (a corrupt row, or one written by a newer broker):
/// leasing its job fails *before* the lease commits, so the job stays queued for an agent that
/// is never told of it to hold (DESIGN.md §8.7: no orphaned lease). Once the row is readable
/// again the job leases as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_kind_does_not_parse_leaves_its_job_queued() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyward.db");
    let store = Store::open(&DatabaseLocation::Sqlite(db.clone())).await.unwrap();
    let log = AuditLog::start(store.clone());
    let engine = PolicyEngine::load(&workspace_root().join("policies"), Duration::from_millis(500)).unwrap();
    let kek = Arc::new(keyward_broker::kek::Kek::generate());
    let runs = Runs::new(store.clone(), log, Some(Arc::new(engine)), &[], Arc::new(ManualClock::at(T0)), kek);
    let repo = GitRepo::init(&dir.path().join("infra"));
    runs.create_stack(spec("network", &repo.url()), "admin", Context::default()).await.unwrap();
    let run = runs.submit(submission("network", None), "alice", Context::default()).await.unwrap();
    let set_kind = |kind: &str| {
        let script = format!(
            "import sqlite3; c = sqlite3.connect({:?}, timeout=30); \
             c.execute(\"UPDATE runs SET kind = ? WHERE id = ?\", ({kind:?}, {:?})); c.commit()",
            db.to_str().unwrap(),
            run.id
        );
        let status = std::process::Command::new("python3").args(["-c", &script]).status().unwrap();
        assert!(status.success());
    };
    set_kind("teleport");

    let leased = runs.lease_next("default", "agent-1", LEASE).await;
    assert!(matches!(leased, Err(RunError::Store(_))), "{leased:?}");
    // The dispatcher's path: the attempt fails and is logged; nobody gets the job.
    let batch = runs.lease_batch("default", &["agent-1".to_owned(), "agent-2".to_owned()], LEASE).await.unwrap();
    assert_eq!(batch.map(|leases| leases.len()), Some(0));
    let jobs = store.jobs_of(&run.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (job.state.as_str(), job.attempt, job.fencing_token, job.agent_id.as_deref()),
        ("queued", 0, 0, None),
        "the job is still queued, held by nobody"
    );
    let audit = Audit(store.clone());
    assert_eq!(audit.count(kinds::JOB_LEASED).await, 0, "no lease is on record");
    assert_eq!(store.run(&run.id).await.unwrap().unwrap().state, "queued");

    set_kind("deploy");
    let lease = runs.lease_next("default", "agent-1", LEASE).await.unwrap().expect("the job, once its run reads");
    assert_eq!((lease.job_id.as_str(), lease.fencing_token), (job.id.as_str(), 1));
    audit.check_tree().await;
}
