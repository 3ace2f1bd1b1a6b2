//! One store suite, two backends: every behaviour the broker relies on from its database is checked
//! against embedded SQLite and against a real PostgreSQL 15 cluster (SPIRE runs one suite against
//! every datastore plugin the same way).

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use keyward_broker::access::{Access, AccessError, ApiScope};
use keyward_broker::clock::ManualClock;
use keyward_broker::config::DatabaseLocation;
use keyward_broker::identity::SigningAlgorithm;
use keyward_broker::identity::kek::Kek;
use keyward_broker::identity::keyring::{KeyRing, KeySettings};
use keyward_broker::store::{
    Backend, Committed, CredentialEvent, IssuedTokenRow, Journal, JournalEntry, Record, Store, StoreError, TokenClaim,
};
use keyward_tests::postgres::PgCluster;

const T0: i64 = 1_800_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_backend_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let location = DatabaseLocation::Sqlite(dir.path().join("nested/dir/keyward.db"));
    let store = Store::open(&location).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    suite(&location).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_passes_the_store_suite() {
    let cluster = PgCluster::start();
    let location = DatabaseLocation::Postgres(cluster.database("keyward_suite"));
    let store = Store::open(&location).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    assert!(!store.location().contains("password"));
    suite(&location).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_never_print_the_password() {
    let cluster = PgCluster::start();
    let url = cluster.url.replace("postgres@", "postgres:s3cret-pw@").replace("/postgres", "/no_such_db");
    let error = Store::open(&DatabaseLocation::Postgres(url)).await.unwrap_err().to_string();
    assert!(error.contains("no_such_db"), "names the database: {error}");
    assert!(!error.contains("s3cret-pw"), "leaks the password: {error}");
}

async fn suite(location: &DatabaseLocation) {
    let store = Store::open(location).await.unwrap();
    migrations_are_idempotent(location).await;
    api_tokens(&store).await;
    let journal = Journal::start(store.clone());
    issued_tokens(&store, &journal).await;
    replay_cache(&store, &journal).await;
    credential_events(&store, &journal).await;
    group_commit(&journal).await;
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
    assert_eq!(admin.scope, ApiScope::Admin);

    let ci = access.create("ci", ApiScope::Submit, &admin.name).await.unwrap();
    let duplicate = access.create("ci", ApiScope::Audit, &admin.name).await;
    assert!(matches!(duplicate, Err(AccessError::Store(StoreError::Conflict(_)))), "{duplicate:?}");
    let operator = access.authenticate(ci.expose()).await.unwrap();
    assert_eq!((operator.name.as_str(), operator.scope), ("ci", ApiScope::Submit));
    assert!(matches!(operator.require(ApiScope::Admin), Err(AccessError::InsufficientScope { .. })));

    let listed = access.list().await.unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["bootstrap-admin", "ci"]);
    assert!(access.revoke("ci").await.unwrap());
    assert!(!access.revoke("ci").await.unwrap(), "revoking twice reports nothing to revoke");
    assert!(matches!(access.authenticate(ci.expose()).await, Err(AccessError::Unauthenticated)));
    assert!(matches!(access.authenticate("kw_forged").await, Err(AccessError::Unauthenticated)));
    assert!(matches!(access.authenticate("").await, Err(AccessError::Unauthenticated)));
}

fn issued(jti: &str, run_id: &str, at: i64) -> IssuedTokenRow {
    IssuedTokenRow {
        jti: jti.into(),
        kid: "kid".into(),
        subject: "stack:s:phase:plan".into(),
        audience: "vault".into(),
        run_id: run_id.into(),
        stack_id: "s".into(),
        phase: "plan".into(),
        issued_at: at,
        expires_at: at + 300,
        issued_by: "ops".into(),
        claims: "{}".into(),
    }
}

fn event(id: &str, kind: &str, at: i64) -> CredentialEvent {
    CredentialEvent {
        id: id.into(),
        at,
        kind: kind.into(),
        target: "aws:net".into(),
        subject_issuer: "https://kw.example".into(),
        subject_jti: Some("j".into()),
        run_id: Some("run-e".into()),
        stack_id: Some("net".into()),
        phase: Some("plan".into()),
        reasons: "[]".into(),
        details: "{}".into(),
    }
}

fn tokens(rows: &[IssuedTokenRow]) -> JournalEntry {
    JournalEntry::records(rows.iter().cloned().map(Record::IssuedToken).collect())
}

async fn issued_tokens(store: &Store, journal: &Journal) {
    journal.write(tokens(&[issued("j2", "run-a", T0 + 1)])).await.unwrap();
    journal.write(tokens(&[issued("j1", "run-a", T0), issued("j3", "run-b", T0)])).await.unwrap();
    let duplicate = journal.write(tokens(&[issued("j4", "run-c", T0), issued("j1", "run-c", T0)])).await;
    assert!(duplicate.is_err(), "a jti is recorded once: {duplicate:?}");
    let for_run: Vec<_> = store.issued_tokens_for_run("run-a").await.unwrap().into_iter().map(|t| t.jti).collect();
    assert_eq!(for_run, ["j1", "j2"], "oldest first");
    assert_eq!(store.issued_token_count().await.unwrap(), 3, "the refused entry left nothing behind, not even j4");
}

/// An entry that consumes `(issuer, jti)` and records `id` as `allowed`, or `id-replay` as `denied`.
fn claiming(issuer: &str, jti: &str, expires_at: i64, id: &str) -> JournalEntry {
    JournalEntry {
        claim: Some(TokenClaim { issuer: issuer.into(), jti: jti.into(), expires_at, used_at: T0 }),
        records: vec![Record::CredentialEvent(CredentialEvent {
            run_id: Some("run-r".into()),
            ..event(id, "allowed", T0)
        })],
        if_replayed: vec![Record::CredentialEvent(CredentialEvent {
            run_id: Some("run-r".into()),
            ..event(&format!("{id}-replay"), "denied", T0)
        })],
    }
}

async fn replay_cache(store: &Store, journal: &Journal) {
    let ci = "https://ci.example";
    assert_eq!(journal.write(claiming(ci, "j1", T0 + 300, "r1")).await.unwrap(), Committed::Recorded, "first use");
    assert_eq!(journal.write(claiming(ci, "j1", T0 + 300, "r2")).await.unwrap(), Committed::Replayed, "replay");
    let other = journal.write(claiming("https://other.example", "j1", T0 + 300, "r3")).await.unwrap();
    assert_eq!(other, Committed::Recorded, "jti is per issuer");
    assert_eq!(journal.write(claiming(ci, "j2", T0 + 900, "r4")).await.unwrap(), Committed::Recorded);
    let ids: Vec<_> = store.credential_events_for_run("run-r").await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["r1", "r2-replay", "r3", "r4"], "a replay records its refusal, never its records");

    // Many concurrent claims of one token, in one batch or several: exactly one wins.
    let outcomes = concurrently(journal, (0..32).map(|i| claiming(ci, "contested", T0 + 300, &format!("c{i}")))).await;
    assert_eq!(outcomes.iter().filter(|o| **o == Committed::Recorded).count(), 1, "{outcomes:?}");

    // All or nothing: a record that cannot be written releases the claim it came with.
    let mut broken = claiming(ci, "j5", T0 + 300, "r5");
    broken.records.push(Record::CredentialEvent(event("r5-bad", "maybe", T0)));
    assert!(journal.write(broken).await.is_err(), "the kind is constrained by the schema");
    assert_eq!(journal.write(claiming(ci, "j5", T0 + 300, "r6")).await.unwrap(), Committed::Recorded);

    assert_eq!(store.prune_token_ids(T0 + 301).await.unwrap(), 4, "expired entries go (j1 twice, contested, j5)");
    assert_eq!(
        journal.write(claiming(ci, "j2", T0 + 900, "r7")).await.unwrap(),
        Committed::Replayed,
        "live entries stay"
    );
}

async fn credential_events(store: &Store, journal: &Journal) {
    let events =
        |list: &[CredentialEvent]| JournalEntry::records(list.iter().cloned().map(Record::CredentialEvent).collect());
    journal.write(events(&[event("e2", "issued", T0 + 1)])).await.unwrap();
    journal.write(events(&[event("e1", "allowed", T0), event("e3", "denied", T0 + 2)])).await.unwrap();
    let kinds: Vec<_> = store.credential_events_for_run("run-e").await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["allowed", "issued", "denied"]);
    assert_eq!(store.credential_event_count("issued").await.unwrap(), 1);
    let invalid = journal.write(events(&[event("e4", "maybe", T0)])).await;
    assert!(invalid.is_err(), "the kind is constrained by the schema");
}

/// Writes every entry from its own task, all at once.
async fn concurrently(journal: &Journal, entries: impl Iterator<Item = JournalEntry>) -> Vec<Committed> {
    let mut tasks = tokio::task::JoinSet::new();
    for entry in entries {
        let journal = journal.clone();
        tasks.spawn(async move { journal.write(entry).await.unwrap() });
    }
    tasks.join_all().await
}

/// Concurrent entries share commits: that is the point of the journal.
async fn group_commit(journal: &Journal) {
    let (commits, entries) = (journal.stats().commits(), journal.stats().entries());
    let outcomes = concurrently(journal, (0..64).map(|i| tokens(&[issued(&format!("g{i}"), "run-g", T0)]))).await;
    assert!(outcomes.iter().all(|o| *o == Committed::Recorded));
    assert_eq!(journal.stats().entries() - entries, 64);
    let used = journal.stats().commits() - commits;
    assert!(used < 64, "64 concurrent entries took {used} commits: they were not batched");
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
