//! Drift detection on a schedule (docs/drift.md): `keyward stack update --drift-schedule`, the
//! scheduler that queues drift checks on one replica at a time, and each stack's drift state.
//!
//! What must hold: a fire time is handled exactly once — by one of any number of replicas, never
//! twice after a restart or a lease change, once (for the latest) after the broker was down over
//! several — and never doubles a check that is still queued or running (it records the skip);
//! when the lease holder stops, another replica takes over once its lease expires; a stack's drift
//! state follows its checks (`since` is the first check that found the drift); bad input (a
//! malformed cron expression, an unknown remediation, an unknown stack) is refused with the reason
//! and changes nothing.
//!
//! The scheduler's own logic runs in process on both backends with a manual clock (two
//! schedulers on one database play two replicas); real brokers and a real agent running
//! Terraform show the same end to end, at real minute boundaries (so those tests take minutes).

use std::sync::Arc;
use std::time::Duration;

use keyward_broker::audit::{AuditLog, Context, kinds};
use keyward_broker::clock::{Clock as _, ManualClock};
use keyward_broker::policy::PolicyEngine;
use keyward_broker::runs::{
    Drift, DriftScheduler, DriftStatus, JobOutcome, JobReport, Remediation, RunError, Runs, SchedulerSettings,
    StackSpec, StackUpdate, Tick,
};
use keyward_broker::store::drift::{claim_fire, claim_fire_for_run};
use keyward_broker::store::{DatabaseLocation, DriftCounts, Store};
use keyward_tests::audit::Audit;
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::workspace_root;

/// 2027-01-15T08:00:00Z, a quarter-hour boundary.
const T0: i64 = 1_800_000_000;
const QUARTER: i64 = 900;
const SCHEDULE: &str = "*/15 * * * *";
const JOB_LEASE: Duration = Duration::from_secs(60);
/// An hour's lease: it outlasts every step below but the one that lets it expire.
const LEASE: i64 = 3600;
const SETTINGS: SchedulerSettings =
    SchedulerSettings { interval: Duration::from_secs(1), lease: Duration::from_secs(LEASE as u64) };

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_scheduled_drift_checks() {
    let dir = tempfile::tempdir().unwrap();
    suite(&DatabaseLocation::Sqlite(dir.path().join("keyward.db")), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_scheduled_drift_checks() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    suite(&DatabaseLocation::Postgres(cluster.database("keyward_drift")), dir.path()).await;
}

/// One replica's stacks-and-runs service: its own connections and audit writer on the shared
/// database, the shared clock.
async fn replica(location: &DatabaseLocation, clock: &ManualClock) -> Runs {
    let store = Store::open(location).await.unwrap();
    let log = AuditLog::start(store.clone());
    let engine = PolicyEngine::load(&workspace_root().join("policies"), Duration::from_millis(500)).unwrap();
    let kek = Arc::new(keyward_broker::kek::Kek::generate());
    Runs::new(store, log, Some(Arc::new(engine)), &[], Arc::new(clock.clone()), kek)
}

fn spec(name: &str, repository: &str, branch: &str) -> StackSpec {
    StackSpec {
        name: name.into(),
        repository: repository.into(),
        path: String::new(),
        branch: branch.into(),
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

fn schedule(text: Option<&str>) -> StackUpdate {
    StackUpdate { drift_schedule: Some(text.map(str::to_owned)), ..StackUpdate::default() }
}

fn drifted(addresses: &[&str], to_add: i64) -> JobOutcome {
    JobOutcome::Checked(Drift {
        drifted: true,
        summary: format!("{to_add} to add, 0 to change, 0 to destroy"),
        counts: DriftCounts { to_add, ..DriftCounts::default() },
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
    })
}

/// Runs the oldest queued job (the drift check's plan job) to `outcome`.
async fn finish_check(runs: &Runs, outcome: JobOutcome) {
    let lease = runs.lease_next("default", "agent-1", JOB_LEASE).await.unwrap().expect("a queued drift check");
    runs.finish_job(&lease.job_id, "agent-1", lease.fencing_token, JobReport::from(outcome)).await.unwrap();
}

/// Both schedulers wake at once; returns their ticks.
async fn tick_both(a: &DriftScheduler, b: &DriftScheduler) -> (Tick, Tick) {
    let (ta, tb) = tokio::join!(a.tick(), b.tick());
    (ta.unwrap(), tb.unwrap())
}

async fn scheduled_runs(runs: &Runs, stack: &str) -> usize {
    runs.runs(Some(stack), 1000).await.unwrap().len()
}

async fn suite(location: &DatabaseLocation, dir: &std::path::Path) {
    let clock = ManualClock::at(T0 + 10);
    let (a, b) = (replica(location, &clock).await, replica(location, &clock).await);
    let audit = Audit(Store::open(location).await.unwrap());
    let repo = GitRepo::init(&dir.join("infra"));
    let caller = Context::default;
    a.create_stack(spec("network", &repo.url(), "main"), "admin", caller()).await.unwrap();
    a.create_stack(spec("broken", &repo.url(), "no-such-branch"), "admin", caller()).await.unwrap();

    bad_updates_change_nothing(&a, &audit).await;

    // A schedule is set (normalized), with a remediation and a label; the update is on record.
    let update = StackUpdate {
        drift_remediation: Some(Remediation::Plan),
        labels: [("env".to_owned(), Some("prod".to_owned()))].into(),
        ..schedule(Some(" */15  * * * *"))
    };
    let updated = a.update_stack("network", update, "alice", caller()).await.unwrap();
    assert_eq!(updated.drift_settings.drift_schedule.as_deref(), Some(SCHEDULE));
    assert_eq!(updated.drift_settings.drift_remediation, Remediation::Plan);
    assert_eq!(updated.drift_settings.next_drift_check_at, Some(T0 + QUARTER), "set at 08:00:10: next 08:15");
    assert_eq!((updated.updated_by.as_deref(), updated.drift.clone()), (Some("alice"), DriftStatus::Unknown));
    let entries = audit.referencing("stack:network").await;
    let update_entry = entries.iter().find(|e| e.kind == "updated").expect("a stack.updated entry");
    assert!(update_entry.details.contains(r#""drift_schedule":{"from":null,"to":"*/15 * * * *"}"#), "{update_entry:?}");
    assert_eq!(update_entry.context["actor"], "alice");
    // Remediation off again: these checks stay alone in the pool (a remediation run queued by
    // drift found is drift_remediation.rs's story).
    let off = StackUpdate { drift_remediation: Some(Remediation::Off), ..StackUpdate::default() };
    a.update_stack("network", off, "alice", caller()).await.unwrap();

    let (sa, sb) = (DriftScheduler::new(a.clone(), SETTINGS), DriftScheduler::new(b.clone(), SETTINGS));
    // 08:00 is before the schedule was set: nothing is due. One of the two holds the lease.
    let (ta, tb) = tick_both(&sa, &sb).await;
    assert!(ta.leader != tb.leader, "exactly one replica holds the lease: {ta:?} {tb:?}");
    assert!(ta.queued.is_empty() && tb.queued.is_empty());
    let (leader, follower) = if ta.leader { (&sa, &sb) } else { (&sb, &sa) };
    let holder = audit.0.lease_holder("drift-scheduler").await.unwrap().map(|(holder, _)| holder);
    assert_eq!(holder.as_deref(), Some(leader.holder()));

    // 08:15:05: one check, by the lease holder, from the branch head, as `scheduler`.
    clock.advance(QUARTER - 5);
    let (ta, tb) = tick_both(&sa, &sb).await;
    assert_eq!(ta.queued.len() + tb.queued.len(), 1, "{ta:?} {tb:?}");
    let first = a.runs(Some("network"), 10).await.unwrap().remove(0);
    assert_eq!((first.kind.as_str(), first.triggered_by.as_str()), ("drift", "scheduler"));
    assert_eq!(first.commit_sha, repo.head());
    let created = audit.for_run(&first.id).await.remove(0);
    assert_eq!(created.context["actor"], "scheduler");
    assert!(created.details.contains(&format!(r#""scheduled_for":{}"#, T0 + QUARTER)), "{}", created.details);
    assert!(created.details.contains(&format!(r#""scheduler":"{}""#, leader.holder())), "{}", created.details);
    // Woken again within the same fire time: nothing more.
    let (ta, tb) = tick_both(&sa, &sb).await;
    assert!(ta.queued.is_empty() && tb.queued.is_empty());

    // 08:30: the check is still queued, so this fire time is skipped, and says so.
    clock.advance(QUARTER);
    let (ta, tb) = tick_both(&sa, &sb).await;
    assert_eq!([ta.skipped, tb.skipped].concat(), ["network"]);
    assert_eq!(scheduled_runs(&a, "network").await, 1, "not doubled");
    let stack = a.stack("network").await.unwrap();
    assert_eq!(stack.drift_settings.last_drift_check_at, Some(T0 + 2 * QUARTER));
    let skipped = format!("skipped: drift run {} is still queued", first.id);
    assert_eq!(stack.drift_settings.last_drift_check.as_deref(), Some(skipped.as_str()));

    drift_states_follow_the_checks(&a, leader, &clock).await;
    the_lease_moves_when_its_holder_stops(&a, &audit, leader, follower, &clock).await;
    fire_times_are_claimed_once(&a, &audit.0, follower, &clock).await;
    unqueueable_checks_fail_once(&a, follower, &clock).await;

    // Off: no stack is scheduled any more.
    a.update_stack("network", schedule(Some("off")), "alice", caller()).await.unwrap();
    a.update_stack("broken", schedule(None), "alice", caller()).await.unwrap();
    assert!(audit.0.scheduled_stacks().await.unwrap().is_empty());
    assert_eq!(audit.check_tree().await, audit.0.audit_size().await.unwrap());
}

/// Malformed cron expressions (of several kinds), an unknown stack, an empty update, an unknown
/// pool or target: each refused with the reason, the stack and the audit log unchanged.
async fn bad_updates_change_nothing(runs: &Runs, audit: &Audit) {
    let before = runs.stack("network").await.unwrap();
    let entries = audit.count(kinds::STACK_UPDATED).await;
    for (text, reason) in [
        ("61 * * * *", "minute field `61`: out of range 0-59"),
        ("* 24 * * *", "hour field `24`: out of range 0-23"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 0 * * * *", "expected 5 fields"),
        ("*/0 * * * *", "minute field `*/0`: step 0 is outside 1-59"),
        ("5-1 * * * *", "minute field `5-1`: range 5-1 runs backwards"),
        ("0 0 * JAM *", "month field `JAM`: `JAM` is not a number or a name (JAN-DEC)"),
        ("0 0 30 2 *", "never fires"),
        ("@reboot", "unknown macro `@reboot`"),
    ] {
        let refused = runs.update_stack("network", schedule(Some(text)), "alice", Context::default()).await;
        match refused {
            Err(RunError::Spec(error)) => {
                let message = error.to_string();
                assert!(message.contains(&format!("invalid drift schedule `{text}`")), "{message}");
                assert!(message.contains(reason), "{text}: {message}");
            }
            other => panic!("{text}: expected a refusal, got {other:?}"),
        }
    }
    let unknown = runs.update_stack("nope", schedule(Some(SCHEDULE)), "alice", Context::default()).await;
    assert!(matches!(unknown, Err(RunError::UnknownStack(ref name)) if name == "nope"), "{unknown:?}");
    let empty = runs.update_stack("network", StackUpdate::default(), "alice", Context::default()).await;
    assert!(matches!(empty, Err(RunError::Spec(ref e)) if e.to_string().starts_with("nothing to update")), "{empty:?}");
    let pool = StackUpdate { pool: Some("nowhere".into()), ..schedule(Some(SCHEDULE)) };
    let pool = runs.update_stack("network", pool, "alice", Context::default()).await;
    assert!(matches!(pool, Err(RunError::NoSuchPool(_))), "{pool:?}");
    let target = StackUpdate { plan_targets: Some(vec!["aws:nope".into()]), ..schedule(Some(SCHEDULE)) };
    let target = runs.update_stack("network", target, "alice", Context::default()).await;
    assert!(
        matches!(target, Err(RunError::Spec(ref e)) if e.to_string().contains("unknown plan target")),
        "{target:?}"
    );
    assert_eq!(runs.stack("network").await.unwrap(), before, "nothing changed");
    assert_eq!(audit.count(kinds::STACK_UPDATED).await, entries, "nothing recorded");
}

/// The state follows each check: drifted (since the first check that found it, kept through
/// further drift and a failure), failed (why), in sync (since cleared).
async fn drift_states_follow_the_checks(runs: &Runs, scheduler: &DriftScheduler, clock: &ManualClock) {
    let drift_of = || async { runs.stack("network").await.unwrap().drift };
    let first_found = clock.now();
    finish_check(runs, drifted(&["terraform_data.a"], 1)).await;
    let DriftStatus::Drifted { since, addresses, to_add, run_id, .. } = drift_of().await else {
        panic!("drifted: {:?}", drift_of().await)
    };
    assert_eq!((since, addresses, to_add), (first_found, vec!["terraform_data.a".to_owned()], 1));
    assert!(run_id.is_some());

    next_check(runs, scheduler, clock, drifted(&["terraform_data.a", "terraform_data.b"], 2)).await;
    let DriftStatus::Drifted { since, addresses, .. } = drift_of().await else { panic!("still drifted") };
    assert_eq!((since, addresses.len()), (first_found, 2), "since: the first check that found the drift");

    next_check(runs, scheduler, clock, JobOutcome::Failed("plan failed: provider crashed".into())).await;
    let DriftStatus::Failed { error, run_id, .. } = drift_of().await else { panic!("failed: {:?}", drift_of().await) };
    assert!(error.contains("provider crashed") && run_id.is_some(), "{error}");

    next_check(runs, scheduler, clock, drifted(&["terraform_data.b"], 1)).await;
    let DriftStatus::Drifted { since, .. } = drift_of().await else { panic!("drifted again") };
    assert_eq!(since, first_found, "a failed check in between does not reset it");

    next_check(runs, scheduler, clock, JobOutcome::Checked(Drift::default())).await;
    assert!(matches!(drift_of().await, DriftStatus::InSync { .. }), "{:?}", drift_of().await);
    next_check(runs, scheduler, clock, drifted(&["terraform_data.c"], 1)).await;
    let DriftStatus::Drifted { since, .. } = drift_of().await else { panic!("drifted anew") };
    assert_eq!(since, clock.now(), "a check that found none cleared it");
    finish_check_none_left(runs).await;
}

/// The next fire time: the scheduler queues one check, which ends with `outcome`.
async fn next_check(runs: &Runs, scheduler: &DriftScheduler, clock: &ManualClock, outcome: JobOutcome) {
    clock.advance(QUARTER);
    let tick = scheduler.tick().await.unwrap();
    assert_eq!(tick.queued.len(), 1, "{tick:?}");
    finish_check(runs, outcome).await;
}

async fn finish_check_none_left(runs: &Runs) {
    assert!(runs.lease_next("default", "agent-1", JOB_LEASE).await.unwrap().is_none(), "every check ran");
}

/// The holder stops waking: its lease expires and the other replica takes over, once per fire
/// time; a broker down over many fire times runs one check, for the latest.
async fn the_lease_moves_when_its_holder_stops(
    runs: &Runs,
    audit: &Audit,
    leader: &DriftScheduler,
    follower: &DriftScheduler,
    clock: &ManualClock,
) {
    clock.advance(QUARTER);
    let early = follower.tick().await.unwrap();
    assert!(!early.leader && early.queued.is_empty(), "the holder's lease has not expired yet: {early:?}");
    // The holder stopped: an hour later its lease has expired.
    clock.advance(LEASE);
    let before = scheduled_runs(runs, "network").await;
    let took_over = follower.tick().await.unwrap();
    assert!(took_over.leader && took_over.queued.len() == 1, "one check, for the latest fire time: {took_over:?}");
    let (_, run_id) = &took_over.queued[0];
    let created = audit.for_run(run_id).await.remove(0);
    assert!(created.details.contains(&format!(r#""scheduler":"{}""#, follower.holder())), "{}", created.details);
    let back = leader.tick().await.unwrap();
    assert!(!back.leader && back.queued.is_empty(), "the old holder waits its turn: {back:?}");
    finish_check(runs, JobOutcome::Checked(Drift::default())).await;

    // Down for ten fire times: one check, for the latest.
    clock.advance(10 * QUARTER);
    let returned = follower.tick().await.unwrap();
    assert_eq!(returned.queued.len(), 1, "{returned:?}");
    assert_eq!(scheduled_runs(runs, "network").await, before + 2);
    let stack = runs.stack("network").await.unwrap();
    let latest = (clock.now() / QUARTER) * QUARTER;
    assert_eq!(stack.drift_settings.last_drift_check_at, Some(latest));
    assert!(follower.tick().await.unwrap().queued.is_empty());
    finish_check(runs, JobOutcome::Checked(Drift::default())).await;
}

/// A fire time is claimed by a guarded write: once only, for the schedule read, and never beside
/// a queued check, even by two wakes of a scheduler racing each other.
async fn fire_times_are_claimed_once(runs: &Runs, store: &Store, scheduler: &DriftScheduler, clock: &ManualClock) {
    let handled = runs.stack("network").await.unwrap().drift_settings.last_drift_check_at.unwrap();
    let again = claim_fire("network", SCHEDULE, handled, "again".into());
    assert!(!store.apply_writes(&[again]).await.unwrap(), "a handled fire time is not claimed twice");
    let other = claim_fire("network", "0 * * * *", handled + QUARTER, "another schedule".into());
    assert!(!store.apply_writes(&[other]).await.unwrap(), "a claim holds only for the schedule it read");

    clock.advance(QUARTER);
    let before = scheduled_runs(runs, "network").await;
    let (one, two) = tokio::join!(scheduler.tick(), scheduler.tick());
    let queued = one.unwrap().queued.len() + two.unwrap().queued.len();
    assert_eq!((queued, scheduled_runs(runs, "network").await), (1, before + 1), "racing wakes queue one check");
    let beside = claim_fire_for_run("network", SCHEDULE, handled + 2 * QUARTER, "beside".into());
    assert!(!store.apply_writes(&[beside]).await.unwrap(), "never beside a queued check");
    finish_check(runs, JobOutcome::Checked(Drift::default())).await;
}

/// A check that cannot be queued (its branch does not exist) fails the stack's drift state with
/// why, and its fire time is handled: not retried at every wake.
async fn unqueueable_checks_fail_once(runs: &Runs, scheduler: &DriftScheduler, clock: &ManualClock) {
    runs.update_stack("broken", schedule(Some("* * * * *")), "alice", Context::default()).await.unwrap();
    clock.advance(60);
    let tick = scheduler.tick().await.unwrap();
    assert_eq!(tick.failed.iter().map(|(stack, _)| stack.as_str()).collect::<Vec<_>>(), ["broken"], "{tick:?}");
    let stack = runs.stack("broken").await.unwrap();
    let DriftStatus::Failed { error, run_id, .. } = &stack.drift else { panic!("failed: {:?}", stack.drift) };
    assert!(
        error.starts_with("the scheduled check could not be queued: ") && error.contains("no-such-branch"),
        "{error}"
    );
    assert_eq!(run_id, &None);
    assert!(stack.drift_settings.last_drift_check.as_deref().is_some_and(|n| n == error), "{stack:?}");
    let again = scheduler.tick().await.unwrap();
    assert!(again.failed.is_empty() && again.queued.is_empty(), "handled once: {again:?}");
    assert_eq!(scheduled_runs(runs, "broken").await, 0);
}

/// `keyward.run` refuses a scheduled check (here: drift checks are frozen): the refusal is on
/// record as the scheduler's, the stack's drift state says why, and the fire time is handled once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_scheduled_check_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rego") {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("run.rego"),
        "package keyward.run\n\ndefault allow := false\n\nallow if input.kind == \"deploy\"\n\n\
         deny contains \"drift checks are frozen\" if input.kind == \"drift\"\n",
    )
    .unwrap();
    let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("keyward.db"))).await.unwrap();
    let engine = PolicyEngine::load(&policies, Duration::from_millis(500)).unwrap();
    let clock = ManualClock::at(T0 + 10);
    let kek = Arc::new(keyward_broker::kek::Kek::generate());
    let runs = Runs::new(
        store.clone(),
        AuditLog::start(store.clone()),
        Some(Arc::new(engine)),
        &[],
        Arc::new(clock.clone()),
        kek,
    );
    let audit = Audit(store);
    let repo = GitRepo::init(&dir.path().join("infra"));
    runs.create_stack(spec("frozen", &repo.url(), "main"), "admin", Context::default()).await.unwrap();
    runs.update_stack("frozen", schedule(Some(SCHEDULE)), "alice", Context::default()).await.unwrap();
    let scheduler = DriftScheduler::new(runs.clone(), SETTINGS);

    clock.advance(QUARTER);
    let tick = scheduler.tick().await.unwrap();
    assert_eq!(tick.failed, [("frozen".to_owned(), "drift checks are frozen".to_owned())], "{tick:?}");
    let refused = audit.0.audit_tail(Some(kinds::RUN_REFUSED), 10).await.unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let entry: serde_json::Value = serde_json::from_str(&refused[0].body).unwrap();
    assert_eq!((&entry["context"]["actor"], &entry["context"]["stack_id"]), (&"scheduler".into(), &"frozen".into()));
    assert_eq!(entry["details"]["reasons"], serde_json::json!(["drift checks are frozen"]));
    let stack = runs.stack("frozen").await.unwrap();
    let why = "the scheduled check was refused by keyward.run: drift checks are frozen";
    assert!(
        matches!(&stack.drift, DriftStatus::Failed { error, run_id: None, .. } if error == why),
        "{:?}",
        stack.drift
    );
    assert_eq!(stack.drift_settings.last_drift_check.as_deref(), Some(why));
    assert_eq!(stack.drift_settings.last_drift_check_at, Some(T0 + QUARTER));
    let again = scheduler.tick().await.unwrap();
    assert!(again.failed.is_empty(), "handled once: {again:?}");
    assert_eq!(audit.count(kinds::RUN_REFUSED).await, 1);
    assert_eq!(scheduled_runs(&runs, "frozen").await, 0, "nothing queued");
}

// ---- Real brokers, a real agent, real minute boundaries. ----

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json as json_of, write_config};
use keyward_tests::{eventually, free_addr, http};
use serde_json::{Value, json};

/// Long enough for two fire times of `* * * * *` after the schedule is set, and a check.
const A_FEW_MINUTES: Duration = Duration::from_secs(200);

/// `keyward serve` with the shipped policies, an agent endpoint, and a drift scheduler that wakes
/// every second and holds its lease for three; `storage` are lines for `[storage]`.
async fn serve(dir: &std::path::Path, storage: &str, envs: &[(&str, &str)], admin: Option<&str>) -> Broker {
    std::fs::create_dir_all(dir).unwrap();
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [scheduler]\ninterval = \"1s\"\nlease = \"3s\"\n",
        workspace_root().join("policies").display(),
        free_addr()
    );
    let data_dir = dir.join("broker");
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = envs.to_vec();
    envs.push(("TEST_KEK", TEST_KEK));
    Broker::serve_as(&config, &data_dir, &format!("http://{addr}"), &envs, admin).await
}

async fn api(broker: &Broker, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http().request(method, format!("{}{path}", broker.addr)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn metrics(broker: &Broker) -> String {
    http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap()
}

/// `run.created` entries (newest last) of scheduled checks: `(stack, scheduled_for, scheduler)`.
async fn scheduled_entries(broker: &Broker) -> Vec<(String, i64, String)> {
    let path = "/v1/audit/entries?tail=1000&kind=run.created";
    let (status, body) = api(broker, reqwest::Method::GET, path, &broker.admin_token, None).await;
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| &line["entry"])
        .filter(|entry| entry["context"]["actor"] == "scheduler")
        .map(|entry| {
            let details = &entry["details"];
            let stack = entry["context"]["stack_id"].as_str().unwrap_or_default().to_owned();
            let holder = details["scheduler"].as_str().unwrap_or_default().to_owned();
            (stack, details["scheduled_for"].as_i64().unwrap_or_default(), holder)
        })
        .collect()
}

/// Bad input through the CLI and the API: refused with the reason, the stack unchanged and no
/// `stack.updated` entry written.
async fn bad_input_is_refused_with_the_reason(broker: &Broker, stack: &str) {
    let before = json_of(&broker.cli(&["stack", "show", stack, "--json"]));
    for (schedule, reason) in [
        ("61 * * * *", "minute field `61`: out of range 0-59"),
        ("* * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 3"),
        ("*/0 * * * *", "minute field `*/0`: step 0 is outside 1-59"),
        ("0 0 31 2 *", "never fires"),
        ("0 9 * * MONDAY", "day-of-week field `MONDAY`"),
    ] {
        let out = broker.cli(&["stack", "update", stack, "--drift-schedule", schedule]);
        assert!(!out.success, "{schedule}: {}", out.stdout);
        assert!(out.stderr.contains(reason) && out.stderr.contains("HTTP 400"), "{schedule}: {}", out.stderr);
    }
    let remediation = broker.cli(&["stack", "update", stack, "--drift-remediation", "fix"]);
    assert_eq!(remediation.code, Some(2), "{}", remediation.stderr);
    assert!(remediation.stderr.contains("possible values: off, plan, apply"), "{}", remediation.stderr);
    let unknown = broker.cli(&["stack", "update", "nope", "--drift-schedule", "* * * * *"]);
    assert!(
        !unknown.success && unknown.stderr.contains("no stack named `nope`") && unknown.stderr.contains("HTTP 404")
    );
    let nothing = broker.cli(&["stack", "update", stack]);
    assert!(!nothing.success && nothing.stderr.contains("nothing to update"), "{}", nothing.stderr);

    let patch = |path: String, token: String, body: Value| async move {
        api(broker, reqwest::Method::PATCH, &path, &token, Some(body)).await
    };
    let path = format!("/v1/stacks/{stack}");
    let admin = broker.admin_token.clone();
    let (status, body) = patch(path.clone(), admin.clone(), json!({"drift_schedule": "0 25 * * *"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("hour field `25`: out of range 0-23"), "{body}");
    let (status, body) = patch(path.clone(), admin.clone(), json!({"drift_remediation": "fix"})).await;
    assert!(status == 400 && body["error_description"].as_str().unwrap().contains("unknown variant `fix`"), "{body}");
    let (status, body) = patch(path.clone(), admin.clone(), json!({"repository": "https://elsewhere"})).await;
    assert!(status == 400 && body["error_description"].as_str().unwrap().contains("unknown field"), "{body}");
    let (status, _) = patch("/v1/stacks/nope".into(), admin.clone(), json!({"drift_schedule": "off"})).await;
    assert_eq!(status, 404);
    let created = json_of(&broker.cli(&["token", "create-api", "--name", "ci", "--scope", "submit", "--json"]));
    let submit = created["token"].as_str().unwrap().to_owned();
    let (status, body) = patch(path, submit, json!({"drift_schedule": "* * * * *"})).await;
    assert_eq!(status, 403, "updating a stack needs the admin scope: {body}");

    assert_eq!(json_of(&broker.cli(&["stack", "show", stack, "--json"])), before, "the stack is unchanged");
    let path = "/v1/audit/entries?tail=10&kind=stack.updated";
    let (_, entries) = api(broker, reqwest::Method::GET, path, &broker.admin_token, None).await;
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(0), "nothing on record: {entries}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_check_finds_drift_with_a_real_agent_and_is_never_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve(dir.path(), "", &[], None).await;
    // A pool no agent serves yet: the first check stays queued across the next fire time.
    json_of(&broker.cli(&["pool", "create", "later", "--json"]));
    // State is not kept between runs here, so `terraform_data.example` always reads as to add.
    let repo = GitRepo::init(&dir.path().join("infra"));
    let url = repo.url();
    json_of(&broker.cli(&["stack", "create", "drifty", "--repository", &url, "--pool", "later", "--json"]));
    let shown = json_of(&broker.cli(&["stack", "show", "drifty", "--json"]));
    assert_eq!((&shown["drift"], &shown["drift_schedule"]), (&json!({"state": "unknown"}), &Value::Null));

    bad_input_is_refused_with_the_reason(&broker, "drifty").await;

    let args = ["stack", "update", "drifty", "--drift-schedule", "* * * * *", "--drift-remediation", "plan", "--json"];
    let updated = json_of(&broker.cli(&args));
    assert_eq!(
        (updated["drift_schedule"].as_str(), updated["drift_remediation"].as_str()),
        (Some("* * * * *"), Some("plan"))
    );
    assert!(updated["next_drift_check_at"].as_i64().is_some_and(|next| next % 60 == 0), "{updated}");

    // The scheduler queues a check at the next minute, as `scheduler`.
    let run = eventually("the scheduled drift check", A_FEW_MINUTES, || {
        let runs = json_of(&broker.cli(&["run", "list", "--stack", "drifty", "--json"]));
        async move { runs["runs"].as_array().and_then(|r| r.first().cloned()) }
    })
    .await;
    assert_eq!(
        (&run["kind"], &run["triggered_by"], &run["state"]),
        (&json!("drift"), &json!("scheduler"), &json!("queued"))
    );
    let id = run["id"].as_str().unwrap().to_owned();
    // The next fire time finds it still queued: skipped, and said so; still one run.
    let skipped = format!("skipped: drift run {id} is still queued");
    eventually("the next fire time to be skipped", A_FEW_MINUTES, || {
        let stack = json_of(&broker.cli(&["stack", "show", "drifty", "--json"]));
        let done = stack["last_drift_check"].as_str() == Some(skipped.as_str());
        async move { done.then_some(()) }
    })
    .await;
    let runs = json_of(&broker.cli(&["run", "list", "--stack", "drifty", "--json"]));
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "not doubled: {runs}");
    let counted = metrics(&broker).await;
    assert!(counted.contains("keyward_drift_checks_scheduled_total{outcome=\"queued\"} 1\n"), "{counted}");
    assert!(!counted.contains("keyward_drift_checks_scheduled_total{outcome=\"skipped\"} 0\n"), "{counted}");
    assert!(counted.contains("keyward_drift_scheduler_leader 1\n"), "{counted}");
    // No more checks after this one.
    let off = json_of(&broker.cli(&["stack", "update", "drifty", "--drift-schedule", "off", "--json"]));
    assert_eq!(off["drift_schedule"], Value::Null);

    // An agent in the pool runs it: Terraform finds the resource to add.
    let token = json_of(&broker.cli(&["pool", "join-token", "later", "--json"]))["token"].as_str().unwrap().to_owned();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &agent_dir);
    assert!(ok, "{stderr}");
    let _agent = Agent::start(&agent_dir, &agent_id, &[]);
    let run = eventually("the check to finish", A_FEW_MINUTES, || {
        let run = json_of(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed")).then_some(run) }
    })
    .await;
    assert_eq!((&run["state"], &run["drift"]), (&json!("finished"), &json!(true)), "{run}");

    the_drift_state_is_shown_everywhere(&broker, &id).await;
}

/// `stack show --json`, `GET /v1/stacks`, `stack list`, `stack show` and `/metrics` all say the
/// stack drifted, with exactly the address Terraform reports.
async fn the_drift_state_is_shown_everywhere(broker: &Broker, run_id: &str) {
    let shown = json_of(&broker.cli(&["stack", "show", "drifty", "--json"]));
    let drift = &shown["drift"];
    assert_eq!(drift["state"], "drifted", "{shown}");
    assert_eq!(drift["addresses"], json!(["terraform_data.example"]), "{shown}");
    let counts = [&drift["to_add"], &drift["to_change"], &drift["to_destroy"], &drift["changed_outside"]];
    assert_eq!(counts, [&json!(1), &json!(0), &json!(0), &json!(0)], "{shown}");
    assert_eq!((drift["run_id"].as_str(), &drift["since"]), (Some(run_id), &drift["checked_at"]), "{shown}");
    let (status, listed) = api(broker, reqwest::Method::GET, "/v1/stacks", &broker.admin_token, None).await;
    assert_eq!(status, 200);
    let listed = listed["stacks"].as_array().unwrap().iter().find(|s| s["name"] == "drifty").cloned().unwrap();
    assert_eq!(listed["drift"], shown["drift"]);
    let (_, one) = api(broker, reqwest::Method::GET, "/v1/stacks/drifty", &broker.admin_token, None).await;
    assert_eq!(one["drift"], shown["drift"]);
    let table = broker.cli(&["stack", "list"]);
    let line = table.stdout.lines().find(|l| l.starts_with("drifty")).unwrap_or_default().to_owned();
    assert!(table.stdout.starts_with("NAME") && line.contains(" drifted "), "{}", table.stdout);
    let human = broker.cli(&["stack", "show", "drifty"]).stdout;
    assert!(
        human.contains("drifted since") && human.contains("1 to add") && human.contains("terraform_data.example"),
        "{human}"
    );
    let text = metrics(broker).await;
    assert!(text.contains("\nkeyward_stacks_drifted 1\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_postgres_queue_each_check_once_and_hand_over() {
    let cluster = PgCluster::start();
    let database_url = cluster.database("keyward");
    let dir = tempfile::tempdir().unwrap();
    let envs = [("KW_DATABASE_URL", database_url.as_str())];
    let storage = "database_url_env = \"KW_DATABASE_URL\"";
    let first = serve(&dir.path().join("a"), storage, &envs, None).await;
    let second = serve(&dir.path().join("b"), storage, &envs, Some(&first.admin_token)).await;
    let repo = GitRepo::init(&dir.path().join("infra"));
    let url = repo.url();
    let stacks = ["one", "two", "three"];
    for stack in stacks {
        json_of(&first.cli(&["stack", "create", stack, "--repository", &url, "--json"]));
        json_of(&second.cli(&["stack", "update", stack, "--drift-schedule", "* * * * *", "--json"]));
    }

    // Each stack's first fire time: one check each, by whichever replica holds the lease.
    let checks = |count: usize| {
        let (first, stacks) = (&first, stacks);
        async move {
            let entries = scheduled_entries(first).await;
            stacks.iter().all(|s| entries.iter().filter(|(stack, ..)| stack == s).count() >= count).then_some(entries)
        }
    };
    let entries = eventually("a check of each stack", A_FEW_MINUTES, || checks(1)).await;
    let leaders: Vec<bool> = [metrics(&first).await, metrics(&second).await]
        .iter()
        .map(|text| text.contains("keyward_drift_scheduler_leader 1\n"))
        .collect();
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "exactly one replica holds the lease");
    let holders: Vec<&str> = entries.iter().map(|(.., holder)| holder.as_str()).collect();
    assert!(holders.windows(2).all(|w| w[0] == w[1]), "one replica queued them: {entries:?}");
    let first_holder = holders[0].to_owned();
    // Canceled, so the next fire time queues anew instead of skipping.
    let (_, runs) = api(&first, reqwest::Method::GET, "/v1/runs?limit=100", &first.admin_token, None).await;
    for run in runs["runs"].as_array().unwrap() {
        json_of(&first.cli(&["run", "cancel", run["id"].as_str().unwrap(), "--json"]));
    }

    // The holder stops without a word: the other takes over once its lease expires.
    let (survivor, stopped) = if leaders[0] { (second, first) } else { (first, second) };
    stopped.stop();
    eventually("the survivor to take the lease", Duration::from_secs(30), || {
        let survivor = &survivor;
        async move { metrics(survivor).await.contains("keyward_drift_scheduler_leader 1\n").then_some(()) }
    })
    .await;
    let checks = |count: usize| {
        let (survivor, stacks) = (&survivor, stacks);
        async move {
            let entries = scheduled_entries(survivor).await;
            stacks.iter().all(|s| entries.iter().filter(|(stack, ..)| stack == s).count() >= count).then_some(entries)
        }
    };
    let entries = eventually("the next check of each stack", A_FEW_MINUTES, || checks(2)).await;
    let mut fires: Vec<(&str, i64)> = entries.iter().map(|(stack, at, _)| (stack.as_str(), *at)).collect();
    let all = fires.len();
    fires.sort_unstable();
    fires.dedup();
    assert_eq!(fires.len(), all, "one check per stack per fire time: {entries:?}");
    let later: Vec<&str> =
        entries.iter().filter(|(.., holder)| *holder != first_holder).map(|(stack, ..)| stack.as_str()).collect();
    assert!(stacks.iter().all(|s| later.contains(s)), "the survivor queued the next checks: {entries:?}");
}
