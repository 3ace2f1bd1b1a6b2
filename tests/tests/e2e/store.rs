//! One store suite, two backends: every behaviour the broker relies on from its database is checked
//! against embedded SQLite and against a real PostgreSQL 15 cluster (SPIRE runs one suite against
//! every datastore plugin the same way).

use std::sync::Arc;
use std::time::Duration;

use keyward_broker::access::{Access, AccessError, ApiScope, Permission};
use keyward_broker::audit::{Append, AuditEvent, AuditLog, Committed, Context, Kind, TokenClaim, kinds};
use keyward_broker::clock::ManualClock;
use keyward_broker::kek::Kek;
use keyward_broker::keys::{KeyRing, KeySettings};
use keyward_broker::roles::{Grants, Role};
use keyward_broker::runs::Runs;
use keyward_broker::store::write::{Refusal, Write};
use keyward_broker::store::{Backend, DatabaseLocation, PRUNE_BATCH, Store, StoreError};
use keyward_broker::tokens::SigningAlgorithm;
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::free_addr;
use keyward_tests::postgres::PgCluster;

const T0: i64 = 1_800_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backend_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let location = DatabaseLocation::Sqlite(dir.path().join("nested/dir/keyward.db"));
    let store = Store::open(&location).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    // Durable before acknowledged: SIGKILL tests keep the page cache, so only this shows an fsync.
    assert_eq!(store.commit_durability().await.unwrap(), "full", "PRAGMA synchronous = FULL");
    suite(&location).await;
    plans_stored_in_the_clear_are_emptied_by_migration_0011(&DatabaseLocation::Sqlite(
        dir.path().join("legacy/keyward.db"),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_passes_the_store_suite() {
    let cluster = PgCluster::start();
    let location = DatabaseLocation::Postgres(cluster.database("keyward_suite"));
    let store = Store::open(&location).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    assert!(!store.location().contains("password"));
    // The test cluster runs with `synchronous_commit = off`; the broker's sessions turn it on.
    assert_eq!(store.commit_durability().await.unwrap(), "on", "synchronous_commit for the broker's sessions");
    suite(&location).await;
    plans_stored_in_the_clear_are_emptied_by_migration_0011(&DatabaseLocation::Postgres(
        cluster.database("keyward_legacy"),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_never_print_the_password() {
    let cluster = PgCluster::start();
    let url = cluster.url.replace("postgres@", "postgres:s3cret-pw@").replace("/postgres", "/no_such_db");
    let error = Store::open(&DatabaseLocation::Postgres(url)).await.unwrap_err().to_string();
    assert!(error.contains("no_such_db"), "names the database: {error}");
    assert!(!error.contains("s3cret-pw"), "leaks the password: {error}");
}

/// Security review L2: the data directory and the SQLite files are the broker's alone, whatever the
/// directory's mode was (here 0755, as systemd's `StateDirectory=` makes it) and the file's (0644).
#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_and_database_files_are_private_after_serve_and_dev_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &std::path::Path| format!("{:o}", std::fs::metadata(path).unwrap().permissions().mode() & 0o7777);
    let open_up = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let serve_dir = dir.path().join("serve");
    std::fs::create_dir(&serve_dir).unwrap();
    open_up(&serve_dir, 0o755);
    std::fs::write(serve_dir.join("keyward.db"), b"").unwrap();
    open_up(&serve_dir.join("keyward.db"), 0o644);
    let dev_dir = dir.path().join("dev");
    std::fs::create_dir(&dev_dir).unwrap();
    open_up(&dev_dir, 0o755);

    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    write_config(&config, addr, &serve_dir, &ConfigExtra::default());
    let serve = Broker::serve(&config, &serve_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    let dev = Broker::dev(&dev_dir).await;
    for (broker, data_dir) in [(&serve, &serve_dir), (&dev, &dev_dir)] {
        assert_eq!(mode(data_dir), "700", "{}", data_dir.display());
        // Running in WAL mode: the write-ahead log and its index exist now.
        for file in ["keyward.db", "keyward.db-wal", "keyward.db-shm"] {
            assert_eq!(mode(&data_dir.join(file)), "600", "{}/{file}", data_dir.display());
        }
        let log = broker.log_text();
        assert!(log.contains("the data directory was open to other users; it is now 0700"), "{log}");
    }
}

async fn suite(location: &DatabaseLocation) {
    let store = Store::open(location).await.unwrap();
    migrations_are_idempotent(location).await;
    api_tokens(&store).await;
    let log = AuditLog::start(store.clone());
    audit_entries(location, &store, &log).await;
    replay_cache(&store, &log).await;
    group_commit(&log).await;
    a_lease_guard_refuses_a_revoked_holder(&store, &log).await;
    replicas_append_one_gap_free_sequence(location).await;
    sink_cursors_never_move_back(&store).await;
    a_taken_over_delivery_claim_cannot_settle(&store).await;
    console_links_work_once_within_a_minute(&store, &log).await;
    signing_keys_across_replicas(location).await;
    store.ping().await.unwrap();
}

async fn migrations_are_idempotent(location: &DatabaseLocation) {
    // Opening twice re-runs the migrator against an up-to-date schema.
    Store::open(location).await.unwrap();
    Store::open(location).await.unwrap();
}

async fn api_tokens(store: &Store) {
    let clock = ManualClock::at(T0);
    let access = Access::new(store.clone(), Arc::new(clock));
    let bootstrap = access.bootstrap().await.unwrap().expect("first bootstrap creates a token");
    assert!(access.bootstrap().await.unwrap().is_none(), "bootstrap happens once");
    let admin = access.authenticate(bootstrap.expose()).await.unwrap();
    assert_eq!(admin.grants, Grants::one("root", Role::Admin));

    let ci = access.create("ci", ApiScope::Submit, &admin.name).await.unwrap();
    let duplicate = access.create("ci", ApiScope::Audit, &admin.name).await;
    assert!(matches!(duplicate, Err(AccessError::Store(StoreError::Conflict(_)))), "{duplicate:?}");
    let operator = access.authenticate(ci.expose()).await.unwrap();
    assert_eq!((operator.name.as_str(), &operator.grants), ("ci", &Grants::one("root", Role::Submitter)));
    assert!(matches!(operator.require(Permission::Administer), Err(AccessError::InsufficientScope { .. })));
    assert!(matches!(operator.require(Permission::ReviewRuns), Err(AccessError::InsufficientScope { .. })));

    let listed = access.list().await.unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["bootstrap-admin", "ci"]);
    assert!(access.revoke("ci").await.unwrap());
    assert!(!access.revoke("ci").await.unwrap(), "revoking twice reports nothing to revoke");
    assert!(matches!(access.authenticate(ci.expose()).await, Err(AccessError::Unauthenticated)));
    assert!(matches!(access.authenticate("kw_forged").await, Err(AccessError::Unauthenticated)));
    assert!(matches!(access.authenticate("").await, Err(AccessError::Unauthenticated)));

    // The review scope is storable on every backend (migration 0010 widened the CHECK); since
    // spaces it is the reviewer role on root, which also submits (roles are ordered).
    let reviewer = access.create("reviewer", ApiScope::Review, &admin.name).await.unwrap();
    let reviewer = access.authenticate(reviewer.expose()).await.unwrap();
    assert_eq!(reviewer.grants, Grants::one("root", Role::Reviewer));
    assert!(reviewer.require(Permission::ReviewRuns).is_ok() && reviewer.require(Permission::Administer).is_err());

    // A token in a space holds its role there only, on every backend (migration 0021).
    let team = access.create_in("team", "root", Role::Viewer, &admin.name).await.unwrap();
    let team = access.authenticate(team.expose()).await.unwrap();
    assert_eq!(team.grants, Grants::one("root", Role::Viewer));
}

/// An entry about run `run`, told apart by `id` in its details.
fn event(kind: Kind, run: &str, id: &str) -> AuditEvent {
    let context = Context { run_id: Some(run.to_owned()), ..Context::default() };
    AuditEvent::new(kind, T0, context).with("id", id)
}

fn ids(entries: &[keyward_tests::audit::Logged]) -> Vec<String> {
    entries
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.details).unwrap()["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn audit_entries(location: &DatabaseLocation, store: &Store, log: &AuditLog) {
    let audit = Audit(store.clone());
    log.append(Append::events(vec![event(Kind::TokenMinted, "run-a", "a1")])).await.unwrap();
    let pair = vec![event(Kind::CredentialsAllowed, "run-a", "a2"), event(Kind::CredentialsIssued, "run-b", "b1")];
    log.append(Append::events(pair)).await.unwrap();
    assert_eq!(ids(&audit.for_run("run-a").await), ["a1", "a2"], "in order");
    assert_eq!(audit.count(kinds::CREDENTIALS_ISSUED).await, 1);
    assert_eq!(audit.check_tree().await, 3);

    // An append that cannot be encoded (floats have no canonical form) is refused before it
    // reaches the writer: nothing of it is written, not even its valid first entry, and the log
    // stays healthy for everyone else.
    let broken = vec![event(Kind::TokenMinted, "run-c", "c1"), event(Kind::TokenMinted, "run-c", "c2").with("x", 1.5)];
    let refused = log.append(Append::events(broken)).await.unwrap_err();
    assert!(matches!(&refused, StoreError::Corrupt(why) if why.contains("integers only")), "{refused:?}");
    assert!(log.stats().healthy());
    assert!(audit.for_run("run-c").await.is_empty(), "the refused append left nothing behind");
    assert_eq!(audit.check_tree().await, 3);

    // A log whose database connections are gone fails its appends and says it is unhealthy.
    let gone = Store::open(location).await.unwrap();
    let broken_log = AuditLog::start(gone.clone());
    gone.close().await;
    let failed = broken_log.append(Append::events(vec![event(Kind::TokenMinted, "run-d", "d1")])).await.unwrap_err();
    assert!(matches!(failed, StoreError::Append(_)), "the commit failed: {failed:?}");
    assert!(!broken_log.stats().healthy() && broken_log.stats().failed_commits() == 1);
    assert!(audit.for_run("run-d").await.is_empty());
}

/// An append that consumes `(issuer, jti)` and records `id` as allowed, or `id-replay` as denied.
fn claiming(issuer: &str, jti: &str, expires_at: i64, id: &str) -> Append {
    Append {
        claim: Some(TokenClaim { issuer: issuer.into(), jti: jti.into(), expires_at, used_at: T0 }),
        writes: Vec::new(),
        events: vec![event(Kind::CredentialsAllowed, "run-r", id)],
        if_replayed: vec![event(Kind::CredentialsDenied, "run-r", &format!("{id}-replay"))],
    }
}

async fn replay_cache(store: &Store, log: &AuditLog) {
    let ci = "https://ci.example";
    assert!(
        matches!(log.append(claiming(ci, "j1", T0 + 300, "r1")).await.unwrap(), Committed::Recorded(_)),
        "first use"
    );
    assert_eq!(log.append(claiming(ci, "j1", T0 + 300, "r2")).await.unwrap(), Committed::Replayed, "replay");
    let other = log.append(claiming("https://other.example", "j1", T0 + 300, "r3")).await.unwrap();
    assert!(matches!(other, Committed::Recorded(_)), "jti is per issuer");
    assert!(matches!(log.append(claiming(ci, "j2", T0 + 900, "r4")).await.unwrap(), Committed::Recorded(_)));
    let audit = Audit(store.clone());
    assert_eq!(ids(&audit.for_run("run-r").await), ["r1", "r2-replay", "r3", "r4"], "a replay records its refusal");

    // Many concurrent claims of one token, in one batch or several: exactly one wins.
    let outcomes = concurrently(log, (0..32).map(|i| claiming(ci, "contested", T0 + 300, &format!("c{i}")))).await;
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Committed::Recorded(_))).count(), 1, "{outcomes:?}");

    // All or nothing: an append that cannot be written does not take the claim it came with.
    let mut broken = claiming(ci, "j5", T0 + 300, "r5");
    broken.events.push(event(Kind::CredentialsIssued, "run-r", "r5-bad").with("ratio", 0.5));
    let refused = log.append(broken).await.unwrap_err();
    assert!(matches!(&refused, StoreError::Corrupt(why) if why.contains("integers only")), "{refused:?}");
    assert!(matches!(log.append(claiming(ci, "j5", T0 + 300, "r6")).await.unwrap(), Committed::Recorded(_)));

    assert_eq!(store.prune_token_ids(T0 + 301).await.unwrap(), 4, "expired entries go (j1 twice, contested, j5)");
    assert_eq!(log.append(claiming(ci, "j2", T0 + 900, "r7")).await.unwrap(), Committed::Replayed, "live ones stay");

    // More expired than one pruning statement takes: the rest go in the next ones, all counted.
    let many = u64::try_from(PRUNE_BATCH * 2 + 7).unwrap();
    let bulk = (0..many).map(|i| claiming(ci, &format!("bulk-{i}"), T0 + 400, &format!("b{i}")));
    assert!(concurrently(log, bulk).await.iter().all(|o| matches!(o, Committed::Recorded(_))));
    assert_eq!(store.prune_token_ids(T0 + 401).await.unwrap(), many);
    assert_eq!(store.prune_token_ids(T0 + 401).await.unwrap(), 0, "nothing left to forget");
    assert_eq!(log.append(claiming(ci, "j2", T0 + 900, "r8")).await.unwrap(), Committed::Replayed, "live ones stay");
    audit.check_tree().await;
}

/// Appends every entry from its own task, all at once.
async fn concurrently(log: &AuditLog, entries: impl Iterator<Item = Append>) -> Vec<Committed> {
    let mut tasks = tokio::task::JoinSet::new();
    for entry in entries {
        let log = log.clone();
        tasks.spawn(async move { log.append(entry).await.unwrap() });
    }
    tasks.join_all().await
}

/// Concurrent appends share commits: that is the point of group commit.
async fn group_commit(log: &AuditLog) {
    let (commits, entries) = (log.stats().commits(), log.stats().entries());
    let outcomes =
        concurrently(log, (0..64).map(|i| Append::events(vec![event(Kind::TokenMinted, "run-g", &format!("g{i}"))])))
            .await;
    assert!(outcomes.iter().all(|o| matches!(o, Committed::Recorded(_))));
    assert_eq!(log.stats().entries() - entries, 64);
    let used = log.stats().commits() - commits;
    assert!(used < 64, "64 concurrent appends took {used} commits: they were not batched");
}

/// Review L1: a revocation commits before it ends the agent's leases, so a request that
/// authenticated just before it (a `Credentials`, `SourceCredentials` or `SubmitPlan` call) must
/// find the guard of its write refusing once the agent is revoked, though the lease still looks
/// held. The window is played out here, in the order the race takes.
async fn a_lease_guard_refuses_a_revoked_holder(store: &Store, log: &AuditLog) {
    let now = T0;
    let rows = vec![
        Write::one(
            "stack",
            "INSERT INTO stacks (name, repository, path, branch, pool, plan_targets, apply_targets, labels, policies, \
             created_at, created_by) VALUES ('guarded', 'https://git.example.com/infra.git', '.', 'main', 'default', \
             '[]', '[]', '{}', '[]', $1, 'test')",
            vec![now.into()],
        ),
        Write::one(
            "run",
            "INSERT INTO runs (id, stack, state, version, commit_sha, triggered_by, created_at, updated_at) \
             VALUES ('run-guarded', 'guarded', 'planning', 1, $1, 'alice', $2, $2)",
            vec!["a".repeat(40).into(), now.into()],
        ),
        Write::one(
            "agent",
            "INSERT INTO agents (id, pool, hostname, version, state, serial, not_after, enrolled_at) \
             VALUES ('agent-guarded', 'default', 'host', 'test', 'active', '01', $1, $2)",
            vec![(now + 3600).into(), now.into()],
        ),
        Write::one(
            "job",
            "INSERT INTO jobs (id, run_id, phase, pool, state, attempt, agent_id, fencing_token, lease_expires_at, \
             created_at, updated_at) VALUES ('job-guarded', 'run-guarded', 'plan', 'default', 'leased', 1, \
             'agent-guarded', 7, $1, $2, $2)",
            vec![(now + 60).into(), now.into()],
        ),
    ];
    let setup = log.append(Append::changes(rows, vec![event(Kind::JobLeased, "run-guarded", "setup")])).await;
    assert!(matches!(setup.unwrap(), Committed::Recorded(_)));
    let kek = Arc::new(keyward_broker::kek::Kek::generate());
    let runs = Runs::new(store.clone(), log.clone(), None, &[], Arc::new(ManualClock::at(now)), kek);
    // The request authenticated and found its lease: what every guarded agent call does first.
    let held = runs.held_job("job-guarded", "agent-guarded", 7).await.unwrap();
    let guarded = |id: &str| {
        Append::changes(vec![held.lease_guard(now)], vec![event(Kind::CredentialsAllowed, "run-guarded", id)])
    };
    assert!(
        matches!(log.append(guarded("before")).await.unwrap(), Committed::Recorded(_)),
        "an active holder's write commits"
    );

    // The revocation commits (`Agents::revoke`), and its leases have not been ended yet.
    let revoke = Write::one(
        "agent",
        "UPDATE agents SET state = 'revoked', revoked_at = $1, revoked_by = 'admin' WHERE id = 'agent-guarded'",
        vec![now.into()],
    );
    let revoked = log.append(Append::changes(vec![revoke], vec![event(Kind::AgentRevoked, "run-guarded", "revoke")]));
    assert!(matches!(revoked.await.unwrap(), Committed::Recorded(_)));
    let job = store.job("job-guarded").await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.fencing_token), ("leased", 7), "the lease still looks held");

    match log.append(guarded("after")).await.unwrap() {
        Committed::Refused(Refusal::Unmet { what }) => {
            assert!(what.contains("job job-guarded by an unrevoked agent"), "{what}");
        }
        other => panic!("a revoked agent's write committed: {other:?}"),
    }
    assert_eq!(ids(&Audit(store.clone()).for_run("run-guarded").await), ["setup", "before", "revoke"], "nothing after");
}

/// A VCS delivery's claim runs out while its worker is still busy and another worker takes it
/// over (docs/vcs.md): the first worker's settlement changes nothing; the second's settles it.
async fn a_taken_over_delivery_claim_cannot_settle(store: &Store) {
    use keyward_broker::store::vcs::{DeliveryRow, Processed, insert_delivery, settle_delivery};
    let row = DeliveryRow {
        delivery_id: "d-claims".to_owned(),
        provider: "github",
        event: "push".to_owned(),
        received_at: T0,
        received_order: T0 * 1_000_000_000,
        payload: b"{}".to_vec(),
    };
    assert!(store.apply_writes(&[insert_delivery(&row)]).await.unwrap());
    let first = store.claim_vcs_delivery(T0, T0 + 10).await.unwrap().expect("queued and due");
    assert!(store.claim_vcs_delivery(T0 + 5, T0 + 15).await.unwrap().is_none(), "held by the first claim");
    let second = store.claim_vcs_delivery(T0 + 20, T0 + 30).await.unwrap().expect("the expired claim is taken over");
    assert_eq!((first.claim, second.claim), (1, 2));
    assert!(!store.apply_writes(&[settle_delivery(&first, Processed::Done, T0 + 21)]).await.unwrap());
    assert_eq!(store.vcs_delivery_status("d-claims").await.unwrap().map(|(s, _)| s).as_deref(), Some("processing"));
    assert!(store.apply_writes(&[settle_delivery(&second, Processed::Done, T0 + 22)]).await.unwrap());
    assert_eq!(store.vcs_delivery_status("d-claims").await.unwrap().map(|(s, _)| s).as_deref(), Some("done"));
    assert!(store.claim_vcs_delivery(T0 + 100, T0 + 110).await.unwrap().is_none(), "a done delivery is not claimed");
}

/// `keyward console`'s links (docs/console.md): one works once, only within its minute, and the
/// session it opens lasts only while its token is live.
async fn console_links_work_once_within_a_minute(store: &Store, log: &AuditLog) {
    use keyward_broker::console_sessions::{ConsoleSessionError, ConsoleSessions, LINK_TTL};
    let clock = ManualClock::at(T0);
    let access = Access::new(store.clone(), Arc::new(clock.clone()));
    let sessions = ConsoleSessions::new(store.clone(), log.clone(), Arc::new(clock.clone()), true);
    let secret = access.create("console-user", ApiScope::Review, "test").await.unwrap();
    let operator = access.authenticate(secret.expose()).await.unwrap();
    let context = Context::default;

    let late = sessions.create_link(&operator, context()).await.unwrap();
    clock.advance(i64::try_from(LINK_TTL.as_secs()).unwrap());
    let expired = sessions.redeem(late.secret.expose(), context()).await;
    assert!(matches!(expired, Err(ConsoleSessionError::Link)), "a minute later the link is dead: {expired:?}");

    let link = sessions.create_link(&operator, context()).await.unwrap();
    let session = sessions.redeem(link.secret.expose(), context()).await.unwrap();
    let again = sessions.redeem(link.secret.expose(), context()).await;
    assert!(matches!(again, Err(ConsoleSessionError::Link)), "once: {again:?}");
    assert!(sessions.authenticate(link.secret.expose()).await.unwrap().is_none(), "a link is not a session");
    let (_, acting) = sessions.authenticate(session.secret.expose()).await.unwrap().expect("a live session");
    assert_eq!((acting.name.as_str(), &acting.grants), ("console-user", &operator.grants), "it acts as its token");

    let unused = sessions.create_link(&operator, context()).await.unwrap();
    assert!(access.revoke("console-user").await.unwrap());
    assert!(sessions.authenticate(session.secret.expose()).await.unwrap().is_none(), "ends with its token");
    let revoked = sessions.redeem(unused.secret.expose(), context()).await;
    assert!(matches!(revoked, Err(ConsoleSessionError::Link)), "a revoked token's link is dead: {revoked:?}");
}

async fn sink_cursors_never_move_back(store: &Store) {
    assert_eq!(store.sink_cursor("siem").await.unwrap(), 0, "a new sink starts at the beginning");
    store.set_sink_cursor("siem", 200).await.unwrap();
    store.set_sink_cursor("siem", 100).await.unwrap(); // a slower replica reports older progress
    assert_eq!(store.sink_cursor("siem").await.unwrap(), 200);
    store.set_sink_cursor("siem", 250).await.unwrap();
    assert_eq!(store.sink_cursor("siem").await.unwrap(), 250);
    assert_eq!(store.sink_cursor("archive").await.unwrap(), 0, "cursors are per sink");
}

/// Two brokers on one database (two replicas) appending at once: one gap-free, totally ordered
/// sequence, and a tree that both the entries and the stored nodes agree on.
async fn replicas_append_one_gap_free_sequence(location: &DatabaseLocation) {
    let (a, b) = (Store::open(location).await.unwrap(), Store::open(location).await.unwrap());
    let (log_a, log_b) = (AuditLog::start(a.clone()), AuditLog::start(b.clone()));
    let before = a.audit_size().await.unwrap();
    let writes = |log: AuditLog, name: &'static str| async move {
        concurrently(
            &log,
            (0..40).map(|i| Append::events(vec![event(Kind::TokenMinted, "run-x", &format!("{name}{i}"))])),
        )
        .await
    };
    let (ra, rb) = tokio::join!(writes(log_a, "a"), writes(log_b, "b"));
    assert!(ra.iter().chain(&rb).all(|o| matches!(o, Committed::Recorded(_))));
    assert_eq!(a.audit_size().await.unwrap(), before + 80);
    assert_eq!(Audit(b).check_tree().await, before + 80);
}

async fn signing_keys_across_replicas(location: &DatabaseLocation) {
    let clock = ManualClock::at(T0);
    let kek = Kek::generate();
    let settings = KeySettings {
        algorithm: SigningAlgorithm::RS256,
        rotation_period: Duration::from_secs(3600),
        jwks_max_age: Duration::from_secs(60),
        clock_skew: Duration::from_secs(10),
    };
    let replica = || async {
        let store = Store::open(location).await.unwrap();
        KeyRing::load(store, kek.clone(), Arc::new(clock.clone()), settings).await.unwrap()
    };
    let (a, b) = tokio::join!(replica(), replica());
    assert_eq!(a.signer().kid(), b.signer().kid(), "concurrent first starts agree on one key set");
    assert_eq!(a.signer().algorithm(), SigningAlgorithm::RS256);
    assert_eq!(a.list().len(), 2);

    clock.advance(3600);
    let (ra, rb) = tokio::join!(a.rotate_if_due(), b.rotate_if_due());
    let rotations = [ra.unwrap(), rb.unwrap()].into_iter().flatten().count();
    assert_eq!(rotations, 1, "two replicas due at once rotate exactly once");
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(a.signer().kid(), b.signer().kid());
    let states: Vec<_> = a.list().into_iter().map(|k| k.state).collect();
    assert_eq!(states.iter().filter(|s| **s == "retired").count(), 1);
    assert_eq!(a.published_keys(), 3, "retired, current and next are published");

    clock.advance(3600 + 10 + 1);
    a.refresh().await.unwrap();
    assert_eq!(a.published_keys(), 2, "the retired key is pruned after its last token expired plus skew");
}

/// Security review L2: a saved plan stored before plans were sealed holds the plan file and its
/// JSON in the clear. Migration 0011 empties both (SQL cannot seal; the apply then refuses the
/// plan and says to plan again), keeps the digest and verdict, and on SQLite zeroes the freed
/// pages, so no copy stays in the file.
async fn plans_stored_in_the_clear_are_emptied_by_migration_0011(location: &DatabaseLocation) {
    const FILE_SECRET: &str = "legacy-plan-Secr3t";
    const JSON_SECRET: &str = "legacy-json-Secr3t";
    // The database as a broker from before migration 0011 left it.
    let pool = keyward_tests::legacy::database_before(location, 11).await;
    let url = match location {
        DatabaseLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseLocation::Postgres(url) => url.clone(),
    };
    let plan_file = format!("PK\x03\x04 tfplan tfconfig/m-/main.tf {FILE_SECRET} ").repeat(1000);
    let plan_json = format!("{{\"variables\": {{\"pw\": {{\"value\": \"{JSON_SECRET}\"}}}}}}");
    for sql in [
        "INSERT INTO stacks VALUES ('old', 'file:///r', '.', 'main', 'default', '[]', '[]', '{}', '[]', 1, 'a')",
        "INSERT INTO runs (id, stack, state, version, commit_sha, triggered_by, created_at, updated_at) \
         VALUES ('run-old', 'old', 'planned', 1, 'abc', 'a', 1, 1)",
        "INSERT INTO jobs (id, run_id, phase, pool, state, attempt, fencing_token, created_at, updated_at) \
         VALUES ('job-old', 'run-old', 'plan', 'default', 'succeeded', 1, 1, 1, 1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO plans (run_id, job_id, sha256, plan_file, plan_json, deny, warn, created_at) \
         VALUES ('run-old', 'job-old', $1, $2, $3, '[]', '[]', 1)",
    )
    .bind(vec![7u8; 32])
    .bind(plan_file.into_bytes())
    .bind(plan_json)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(location).await.unwrap();
    let row = store.plan("run-old").await.unwrap().expect("the row stays, for the record");
    assert_eq!(
        (row.job_id.as_str(), row.sha256.as_slice(), row.deny.as_str()),
        ("job-old", [7u8; 32].as_slice(), "[]")
    );
    assert!(store.sealed_plan("run-old").await.unwrap().unwrap().sealed.is_empty(), "the plan file is gone");
    store.close().await;
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let json: String = sqlx::query_scalar("SELECT plan_json FROM plans").fetch_one(&pool).await.unwrap();
    assert_eq!(json, "{}");
    pool.close().await;
    if let DatabaseLocation::Sqlite(path) = location {
        // Every connection is closed: the write-ahead log is checkpointed into the file.
        let mut at_rest = Vec::new();
        for suffix in ["", "-wal", "-journal"] {
            at_rest.extend(std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default());
        }
        for secret in [FILE_SECRET, JSON_SECRET] {
            assert!(!at_rest.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} is still in the file");
        }
    }
}
