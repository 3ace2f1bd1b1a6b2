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
use keyward_broker::store::{Backend, CredentialEvent, IssuedTokenRow, Store, StoreError};
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
    issued_tokens(&store).await;
    replay_cache(&store).await;
    credential_events(&store).await;
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

async fn issued_tokens(store: &Store) {
    store.record_issued_token(&issued("j2", "run-a", T0 + 1)).await.unwrap();
    store.record_issued_token(&issued("j1", "run-a", T0)).await.unwrap();
    store.record_issued_token(&issued("j3", "run-b", T0)).await.unwrap();
    let replay = store.record_issued_token(&issued("j1", "run-c", T0)).await;
    assert!(matches!(replay, Err(StoreError::Conflict(_))), "a jti is recorded once: {replay:?}");
    let for_run: Vec<_> = store.issued_tokens_for_run("run-a").await.unwrap().into_iter().map(|t| t.jti).collect();
    assert_eq!(for_run, ["j1", "j2"], "oldest first");
    assert_eq!(store.issued_token_count().await.unwrap(), 3, "the refused duplicate left nothing behind");
}

async fn replay_cache(store: &Store) {
    assert!(store.claim_token_id("https://ci.example", "j1", T0 + 300, T0).await.unwrap(), "first use");
    assert!(!store.claim_token_id("https://ci.example", "j1", T0 + 300, T0 + 1).await.unwrap(), "replay");
    assert!(store.claim_token_id("https://other.example", "j1", T0 + 300, T0).await.unwrap(), "jti is per issuer");
    assert!(store.claim_token_id("https://ci.example", "j2", T0 + 900, T0).await.unwrap());
    assert_eq!(store.prune_token_ids(T0 + 301).await.unwrap(), 2, "expired entries go");
    assert!(!store.claim_token_id("https://ci.example", "j2", T0 + 900, T0 + 2).await.unwrap(), "live entries stay");
}

async fn credential_events(store: &Store) {
    let event = |id: &str, kind: &str, at: i64| CredentialEvent {
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
    };
    store.record_credential_event(&event("e2", "issued", T0 + 1)).await.unwrap();
    store.record_credential_event(&event("e1", "allowed", T0)).await.unwrap();
    store.record_credential_event(&event("e3", "denied", T0 + 2)).await.unwrap();
    let kinds: Vec<_> = store.credential_events_for_run("run-e").await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["allowed", "issued", "denied"]);
    assert_eq!(store.credential_event_count("denied").await.unwrap(), 1);
    let invalid = store.record_credential_event(&event("e4", "maybe", T0)).await;
    assert!(invalid.is_err(), "the kind is constrained by the schema");
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
