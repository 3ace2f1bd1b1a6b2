//! The audit log's storage (one batch row per commit, tiles and lookup keys built afterwards by
//! the integrator), on SQLite and on a real PostgreSQL cluster: reads never wait for the
//! integrator, its steps are idempotent and check every batch against its recorded head, a log of
//! the old layout converts with every leaf hash and old checkpoint intact, and a broker killed
//! with SIGKILL while it appends and integrates recovers the whole log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_broker::audit::merkle::{self, Hash};
use keyward_broker::audit::{Append, AuditEvent, AuditLog, Context, Kind, tree};
use keyward_broker::store::{DatabaseLocation, Store, StoreError};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr};
use serde_json::{Value, json};
use sqlx::Row as _;

const T0: i64 = 1_800_000_000;

/// Entry `i` of a test log: alternating kinds, a run shared by ten entries, a random-looking
/// access key ID.
fn event(i: u64) -> AuditEvent {
    let context = Context { run_id: Some(format!("run-{}", i / 10)), ..Context::default() };
    let kind = if i.is_multiple_of(3) { Kind::CredentialsIssued } else { Kind::TokenMinted };
    let akid = format!("ASIA{:016X}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    AuditEvent::new(kind, T0, context).with("n", i).with_ref("akid", &akid)
}

async fn raw(location: &DatabaseLocation) -> sqlx::AnyPool {
    let url = match location {
        DatabaseLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseLocation::Postgres(url) => url.clone(),
    };
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&url).await.unwrap()
}

/// What a reader sees: a run's entries, a kind's count and tail, heads and proofs.
async fn answers(store: &Store, size: u64) -> Value {
    let audit = Audit(store.clone());
    let run: Vec<u64> = audit.for_run("run-7").await.iter().map(|e| e.seq).collect();
    let tail: Vec<u64> = store.audit_tail(Some("credentials.issued"), 5).await.unwrap().iter().map(|e| e.seq).collect();
    let hex = |h: &Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    json!({
        "run": run,
        "count": audit.count("token.minted").await,
        "tail": tail,
        "root": hex(&tree::root(store, size).await.unwrap()),
        "root_17": hex(&tree::root(store, 17).await.unwrap()),
        "inclusion": tree::inclusion(store, 123, size).await.unwrap().iter().map(hex).collect::<Vec<_>>(),
        "consistency": tree::consistency(store, 17, size).await.unwrap().iter().map(hex).collect::<Vec<_>>(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_reads_never_wait_for_the_integrator_and_its_steps_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    integrator_suite(&DatabaseLocation::Sqlite(dir.path().join("keyward.db"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_reads_never_wait_for_the_integrator_and_its_steps_are_idempotent() {
    let cluster = PgCluster::start();
    integrator_suite(&DatabaseLocation::Postgres(cluster.database("integrator"))).await;
}

async fn integrator_suite(location: &DatabaseLocation) {
    let store = Store::open(location).await.unwrap();
    let log = AuditLog::start(store.clone());
    // Six commits of fifty entries: six batch rows, none integrated.
    for batch in 0..6u64 {
        log.append(Append::events((batch * 50..batch * 50 + 50).map(event).collect())).await.unwrap();
    }
    let size = store.audit_size().await.unwrap();
    assert_eq!((size, store.audit_integrated().await.unwrap()), (300, 0));
    // Entries pruned before the integrator reaches them get no lookup keys.
    assert_eq!(store.prune_audit_entries(5).await.unwrap(), 5);
    let before = answers(&store, size).await;
    assert_eq!(before["run"], json!((70..80).collect::<Vec<u64>>()), "found from the batches alone");
    assert_eq!(before["count"], json!(197), "200 minted, 3 of them among the 5 pruned");
    assert_eq!(before["tail"], json!([285, 288, 291, 294, 297]));
    let leaves: Vec<Hash> =
        (0..size).map(|i| merkle::leaf_hash(event(i).prepare().unwrap().body(i).as_bytes())).collect();
    assert_eq!(tree::root(&store, size).await.unwrap(), merkle::root(&leaves[..], size).unwrap());

    // Integrate in steps of two batches (a step takes whole batches): the same answers, now from
    // tiles and lookup keys.
    let mut steps = Vec::new();
    while let Some(step) = store.integrate_audit(64).await.unwrap() {
        steps.push((step.from, step.to));
    }
    assert_eq!(steps, [(0, 100), (100, 200), (200, 300)]);
    assert_eq!(store.audit_integrated().await.unwrap(), size);
    assert_eq!(answers(&store, size).await, before, "integration changes no answer");

    // Redoing every step (a step that died after writing, say) writes the same bytes.
    let db = raw(location).await;
    let snapshot = |db: sqlx::AnyPool| async move {
        let tiles: BTreeMap<(i32, i64), Vec<u8>> = sqlx::query("SELECT level, idx, hashes FROM audit_tiles")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| ((r.get("level"), r.get("idx")), r.get("hashes")))
            .collect();
        let refs: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_refs").fetch_one(&db).await.unwrap().get("n");
        (tiles, refs)
    };
    let (tiles, refs) = snapshot(db.clone()).await;
    assert_eq!(tiles.len(), 3, "level 0: one full tile and one of 44; level 1: one hash");
    assert_eq!(refs, 295 * 3, "per unpruned entry: kind, run and access key");
    sqlx::query("UPDATE audit_integration SET size = 0").execute(&db).await.unwrap();
    while store.integrate_audit(1000).await.unwrap().is_some() {}
    assert_eq!(snapshot(db.clone()).await, (tiles, refs), "tiles and keys are a function of the log");

    // Pruning every entry deletes every (integrated) batch row; the tiles stay, and the writer
    // extends the tree from them.
    assert_eq!(store.prune_audit_entries(size).await.unwrap(), size - 5);
    let batches: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_batches").fetch_one(&db).await.unwrap().get("n");
    assert_eq!(batches, 0);
    let fresh = AuditLog::start(store.clone()); // a restarted writer: nothing cached
    fresh.append(Append::events((300..305).map(event).collect())).await.unwrap();
    let leaves: Vec<Hash> =
        (0..305).map(|i| merkle::leaf_hash(event(i).prepare().unwrap().body(i).as_bytes())).collect();
    assert_eq!(tree::root(&store, 305).await.unwrap(), merkle::root(&leaves[..], 305).unwrap());

    // A batch whose entries do not hash to the head recorded with it stops the integrator, which
    // says so and leaves its cursor where it was.
    sqlx::query("UPDATE audit_batches SET root = $1 WHERE first_seq = 300")
        .bind(vec![0u8; 32])
        .execute(&db)
        .await
        .unwrap();
    let refused = store.integrate_audit(1000).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Corrupt(why) if why.contains("does not hash to the tree head")),
        "{refused:?}"
    );
    assert_eq!(store.audit_integrated().await.unwrap(), 300);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_an_old_layout_log_converts_with_its_leaf_hashes_and_checkpoints_intact() {
    let dir = tempfile::tempdir().unwrap();
    converts_an_old_layout_log(&DatabaseLocation::Sqlite(dir.path().join("old/keyward.db"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_old_layout_log_converts_with_its_leaf_hashes_and_checkpoints_intact() {
    let cluster = PgCluster::start();
    converts_an_old_layout_log(&DatabaseLocation::Postgres(cluster.database("old_layout"))).await;
}

/// Every perfect subtree of the tree over `leaves`, as the old writer stored them.
fn all_nodes(leaves: &[Hash]) -> Vec<(i32, i64, Hash)> {
    let mut nodes = Vec::new();
    let mut row = leaves.to_vec();
    let mut level = 0;
    while !row.is_empty() {
        nodes.extend(row.iter().enumerate().map(|(i, h)| (level, i as i64, *h)));
        row = row.chunks_exact(2).map(|pair| merkle::node_hash(&pair[0], &pair[1])).collect();
        level += 1;
    }
    nodes
}

async fn converts_an_old_layout_log(location: &DatabaseLocation) {
    // Past one converted batch (4,096), with a pruned start.
    const SIZE: u64 = 4_500;
    const PRUNED: u64 = 100;
    let events: Vec<_> = (0..SIZE).map(|i| event(i).prepare().unwrap()).collect();
    let bodies: Vec<String> = events.iter().zip(0..).map(|(e, seq)| e.body(seq)).collect();
    let leaves: Vec<Hash> = bodies.iter().map(|b| merkle::leaf_hash(b.as_bytes())).collect();
    let published =
        [(1_000, merkle::root(&leaves[..], 1_000).unwrap()), (SIZE, merkle::root(&leaves[..], SIZE).unwrap())];

    // The database as a broker from before migration 0012 left it.
    let pool = keyward_tests::legacy::database_before(location, 12).await;
    let mut tx = pool.begin().await.unwrap();
    for seq in PRUNED..SIZE {
        let event = &events[seq as usize];
        sqlx::query("INSERT INTO audit_entries (seq, at, kind, body) VALUES ($1, $2, $3, $4)")
            .bind(seq as i64)
            .bind(event.at)
            .bind(event.kind)
            .bind(&bodies[seq as usize])
            .execute(&mut *tx)
            .await
            .unwrap();
        for reference in &event.refs {
            sqlx::query("INSERT INTO audit_refs (ref, seq) VALUES ($1, $2)")
                .bind(reference)
                .bind(seq as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    for (level, index, hash) in all_nodes(&leaves) {
        sqlx::query("INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)")
            .bind(level)
            .bind(index)
            .bind(hash.to_vec())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET size = $1, written_at = $2, pruned_before = $3")
        .bind(SIZE as i64)
        .bind(T0)
        .bind(PRUNED as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;

    let store = Store::open(location).await.unwrap();
    assert_eq!(store.audit_size().await.unwrap(), SIZE);
    assert_eq!(store.audit_integrated().await.unwrap(), SIZE, "converted entries are integrated");
    let stored = store.audit_entries(0, SIZE, SIZE).await.unwrap();
    assert_eq!(stored.len() as u64, SIZE - PRUNED, "pruned entries stay pruned");
    assert!(stored.iter().all(|e| e.body == bodies[e.seq as usize]), "every body byte for byte");
    for (size, root) in published {
        assert_eq!(tree::root(&store, size).await.unwrap(), root, "the head published at {size}");
    }
    let proof = tree::consistency(&store, 1_000, SIZE).await.unwrap();
    merkle::verify_consistency(1_000, SIZE, &published[0].1, &published[1].1, &proof).unwrap();
    let proof = tree::inclusion(&store, 7, SIZE).await.unwrap();
    merkle::verify_inclusion(&leaves[7], 7, SIZE, &proof, &published[1].1).unwrap();
    let audit = Audit(store.clone());
    assert_eq!(audit.for_run("run-432").await.len(), 10, "old lookup keys");
    assert_eq!(audit.count("credentials.issued").await, (PRUNED..SIZE).filter(|i| i.is_multiple_of(3)).count() as u64);
    let db = raw(location).await;
    assert!(sqlx::query("SELECT COUNT(*) FROM audit_legacy_entries").fetch_one(&db).await.is_err(), "dropped");
    db.close().await;

    // The log goes on from the converted one, and extends what was published.
    let log = AuditLog::start(store.clone());
    log.append(Append::events((SIZE..SIZE + 10).map(event).collect())).await.unwrap();
    let mut all = leaves.clone();
    all.extend((SIZE..SIZE + 10).map(|i| merkle::leaf_hash(event(i).prepare().unwrap().body(i).as_bytes())));
    assert_eq!(tree::root(&store, SIZE + 10).await.unwrap(), merkle::root(&all[..], SIZE + 10).unwrap());
    let proof = tree::consistency(&store, SIZE, SIZE + 10).await.unwrap();
    let new_root = tree::root(&store, SIZE + 10).await.unwrap();
    merkle::verify_consistency(SIZE, SIZE + 10, &published[1].1, &new_root, &proof).unwrap();
    // Opening again finds nothing left to convert.
    Store::open(location).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_sigkill_while_appending_and_integrating_loses_nothing() {
    killed_while_appending_and_integrating(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sigkill_while_appending_and_integrating_loses_nothing() {
    let cluster = PgCluster::start_durable();
    killed_while_appending_and_integrating(Some(&cluster.database("crash"))).await;
}

/// Entries appended before the broker starts, so its integrator has a backlog to work through
/// when it is killed.
const BACKLOG: u64 = 120_000;

async fn killed_while_appending_and_integrating(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let location = match database_url {
        Some(url) => DatabaseLocation::Postgres(url.to_owned()),
        None => DatabaseLocation::Sqlite(data_dir.join("keyward.db")),
    };
    {
        let store = Store::open(&location).await.unwrap();
        let log = AuditLog::start(store.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64 {
            let log = log.clone();
            tasks.spawn(async move {
                for i in (t..BACKLOG).step_by(64) {
                    log.append(Append::events(vec![event(i)])).await.unwrap();
                }
            });
        }
        tasks.join_all().await;
        assert_eq!(store.integrated_and_size().await, (0, BACKLOG));
        store.close().await;
    }

    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    let rest = "[tokens]\nallowed_audiences = [\"vault\"]\n";
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    let url = format!("http://{addr}");
    let broker = Broker::serve(&config, &data_dir, &url, &envs).await;
    let admin = broker.admin_token.clone();
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (addr, token, received) = (broker.addr.clone(), admin.clone(), Arc::clone(&received));
        clients.spawn(async move {
            let http = reqwest::Client::new();
            for i in 0.. {
                let body =
                    json!({ "stack": "net", "run_id": format!("crash-{c}-{i}"), "phase": "plan", "audience": "vault" });
                let Ok(response) =
                    http.post(format!("{addr}/v1/run-tokens")).bearer_auth(&token).json(&body).send().await
                else {
                    break;
                };
                if response.status() != 201 {
                    eprintln!("mint refused: {} {}", response.status(), response.text().await.unwrap_or_default());
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else { break };
                received.lock().unwrap().push(body["jti"].as_str().unwrap().to_owned());
            }
        });
    }
    // Kill it once it is both answering clients and part-way through the backlog.
    let reader = Store::open(&location).await.unwrap();
    eventually("tokens issued while the integrator works", Duration::from_secs(60), || {
        let (reader, received) = (reader.clone(), Arc::clone(&received));
        async move {
            let (integrated, _) = reader.integrated_and_size().await;
            (integrated > 0 && received.lock().unwrap().len() >= 10).then_some(())
        }
    })
    .await;
    broker.stop();
    clients.join_all().await;
    let (integrated, size) = reader.integrated_and_size().await;
    assert!(
        integrated < size,
        "the integrator had finished ({integrated} of {size}) before the kill; raise BACKLOG so the kill lands mid-way"
    );
    let received = received.lock().unwrap().clone();

    let broker = Broker::serve_as(&config, &data_dir, &url, &envs, Some(&admin)).await;
    eventually("the integrator to catch up after the restart", Duration::from_secs(120), || {
        let reader = reader.clone();
        async move {
            let (integrated, size) = reader.integrated_and_size().await;
            (integrated == size).then_some(())
        }
    })
    .await;
    let audit = Audit(reader.clone());
    let size = audit.check_tree().await;
    for jti in &received {
        let entries = audit.referencing(&format!("jti:{jti}")).await;
        assert!(entries.iter().any(|e| e.kind == "minted"), "token {jti} was received but cannot be found");
    }
    let minted = reader.audit_entries(0, size, size).await.unwrap().iter().filter(|e| e.kind == "token.minted").count();
    assert_eq!(audit.count("token.minted").await, minted as u64, "one kind key per entry, none lost or doubled");
    let body = json!({ "stack": "net", "run_id": "after", "phase": "plan", "audience": "vault" });
    assert_eq!(broker.mint_raw(&body, Some(&admin)).await.0, 201);
    assert_eq!(audit.check_tree().await, size + 1);
}

/// Test-side reads of the integrator's progress.
trait Progress {
    async fn integrated_and_size(&self) -> (u64, u64);
}

impl Progress for Store {
    async fn integrated_and_size(&self) -> (u64, u64) {
        let integrated = self.audit_integrated().await.unwrap();
        (integrated, self.audit_size().await.unwrap())
    }
}
