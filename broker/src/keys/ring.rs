//! The signing-key lifecycle and the JWKS it publishes.
//!
//! Invariants (DESIGN.md §2):
//! - A key is published before it signs: there is always a `next` key in the JWKS, and rotation
//!   promotes it. A relying party that cached the JWKS since the last rotation already knows the new
//!   signing key.
//! - A retired key stays published until every token it signed has expired, plus clock skew. The
//!   bound used is the hard 1 h token-lifetime cap, not the configured maximum, so changing the
//!   config can never unpublish a key with live tokens.
//! - A retired key's private half is erased from the store: it can verify, never sign again.
//!
//! The parsed key set lives behind an `RwLock<Arc<_>>`: minting takes a read lock for the time of an
//! `Arc` clone, rotation swaps the whole set.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::clock::SharedClock;
use crate::kek::{Kek, UnsealError};
use crate::store::{KeyState, SigningKeyRow, Store, StoreError};
use crate::tokens::rules::MAX_TOKEN_LIFETIME;
use crate::tokens::signer::{Jwk, Signer, SignerError, SigningAlgorithm};
use crate::tokens::{CurrentKey, verify};

/// Key lifecycle failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Generating or parsing a key failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A stored private key could not be opened (wrong KEK, corruption, tampering).
    #[error("signing key `{kid}` (table signing_keys in {location}) cannot be opened: {source}")]
    Unseal {
        /// Which key.
        kid: String,
        /// Which database file or server.
        location: String,
        /// Why.
        source: UnsealError,
    },
    /// A stored row is inconsistent.
    #[error("signing key `{kid}` (table signing_keys in {location}) is corrupted: {reason}")]
    Corrupt {
        /// Which key.
        kid: String,
        /// Which database.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// On-demand rotation was asked for before relying parties could have seen the next key.
    #[error(
        "the next signing key was published {published_secs}s ago, less than the JWKS cache lifetime of {max_age_secs}s; \
         relying parties may not know it yet. retry in {retry_secs}s, or force it (`keyward keys rotate --force`)"
    )]
    TooSoon {
        /// Age of the next key.
        published_secs: i64,
        /// `keys.jwks_max_age`.
        max_age_secs: i64,
        /// Seconds until it is safe.
        retry_secs: i64,
    },
}

/// Lifecycle settings, from `[keys]` and `[tokens]`.
#[derive(Debug, Clone, Copy)]
pub struct KeySettings {
    /// Algorithm of newly generated keys.
    pub algorithm: SigningAlgorithm,
    /// Automatic rotation period.
    pub rotation_period: Duration,
    /// JWKS `Cache-Control: max-age`.
    pub jwks_max_age: Duration,
    /// Clock skew granted to relying parties.
    pub clock_skew: Duration,
}

/// A key as listed by `keyward keys list`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key ID.
    pub kid: String,
    /// Algorithm.
    pub algorithm: String,
    /// `next`, `current` or `retired`.
    pub state: &'static str,
    /// Generation time.
    pub created_at: i64,
    /// When it started signing.
    pub activated_at: Option<i64>,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS.
    pub publish_until: Option<i64>,
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// The key that stopped signing.
    pub retired_kid: String,
    /// The key that signs from now on.
    pub current_kid: String,
    /// The newly published, not-yet-signing key.
    pub next_kid: String,
    /// When the retired key leaves the JWKS.
    pub retired_publish_until: i64,
}

struct KeySet {
    current: Arc<Signer>,
    current_activated_at: i64,
    next_kid: String,
    next_created_at: i64,
    jwks: Arc<str>,
    verification: Arc<verify::KeySet>,
    published: usize,
    listing: Vec<KeyInfo>,
}

/// Owns the signing keys. Shared by every request.
pub struct KeyRing {
    store: Store,
    kek: Kek,
    clock: SharedClock,
    settings: KeySettings,
    set: RwLock<Arc<KeySet>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.snapshot();
        f.debug_struct("KeyRing").field("current", &set.current.kid()).field("next", &set.next_kid).finish()
    }
}

impl KeyRing {
    /// Loads the key set from the store, creating the first keys on a new deployment. Every key
    /// that can sign is opened and parsed now, so corrupted key material stops the start.
    pub async fn load(store: Store, kek: Kek, clock: SharedClock, settings: KeySettings) -> Result<Self, KeyRingError> {
        let mut rows = store.signing_keys().await?;
        if !rows.iter().any(|row| row.state == KeyState::Current) {
            let now = clock.now();
            let current = new_key_row(&kek, settings.algorithm, KeyState::Current, now)?;
            let next = new_key_row(&kek, settings.algorithm, KeyState::Next, now)?;
            if store.init_signing_keys(&current, &next).await? {
                tracing::info!(current = %current.kid, next = %next.kid, algorithm = %settings.algorithm, "generated signing keys");
            }
            rows = store.signing_keys().await?;
        }
        let set = build_set(&store, &kek, clock.now(), &rows)?;
        Ok(Self { store, kek, clock, settings, set: RwLock::new(Arc::new(set)) })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.set.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.snapshot().current)
    }

    /// The JWKS document (pre-serialized).
    pub fn jwks_json(&self) -> Arc<str> {
        Arc::clone(&self.snapshot().jwks)
    }

    /// The published keys as a verification key set: exactly what relying parties trust.
    pub fn verification_keys(&self) -> Arc<verify::KeySet> {
        Arc::clone(&self.snapshot().verification)
    }

    /// How many keys the JWKS publishes.
    pub fn published_keys(&self) -> usize {
        self.snapshot().published
    }

    /// All keys with their lifecycle times.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.snapshot().listing.clone()
    }

    /// JWKS cache lifetime.
    pub fn jwks_max_age(&self) -> Duration {
        self.settings.jwks_max_age
    }

    /// Re-reads the key set from the store (another replica may have rotated) and drops retired
    /// keys whose publication window has passed.
    pub async fn refresh(&self) -> Result<(), KeyRingError> {
        let now = self.clock.now();
        for kid in self.store.prune_signing_keys(now).await? {
            tracing::info!(%kid, "retired signing key left the JWKS");
        }
        let rows = self.store.signing_keys().await?;
        let set = build_set(&self.store, &self.kek, now, &rows)?;
        self.replace(set);
        Ok(())
    }

    /// Rotates if the current key has signed for a full rotation period. Re-reads the store first,
    /// so a replica that finds another one already rotated does nothing.
    pub async fn rotate_if_due(&self) -> Result<Option<Rotation>, KeyRingError> {
        self.refresh().await?;
        let set = self.snapshot();
        let age = self.clock.now().saturating_sub(set.current_activated_at);
        if age < secs(self.settings.rotation_period) {
            return Ok(None);
        }
        self.rotate_from(&set, false).await
    }

    /// Rotates now: the pre-published `next` key starts signing, the current one retires, and a new
    /// `next` key is published. Unless `force`, refuses while the `next` key is younger than the
    /// JWKS cache lifetime. Returns `None` if another replica rotated first.
    pub async fn rotate(&self, force: bool) -> Result<Option<Rotation>, KeyRingError> {
        self.refresh().await?;
        let set = self.snapshot();
        self.rotate_from(&set, force).await
    }

    async fn rotate_from(&self, set: &KeySet, force: bool) -> Result<Option<Rotation>, KeyRingError> {
        let now = self.clock.now();
        let published = now.saturating_sub(set.next_created_at);
        let max_age = secs(self.settings.jwks_max_age);
        if !force && published < max_age {
            return Err(KeyRingError::TooSoon {
                published_secs: published,
                max_age_secs: max_age,
                retry_secs: max_age - published,
            });
        }
        let new_next = new_key_row(&self.kek, self.settings.algorithm, KeyState::Next, now)?;
        let publish_until = now + secs(MAX_TOKEN_LIFETIME) + secs(self.settings.clock_skew);
        let retired_kid = set.current.kid().to_owned();
        let rotated = self.store.rotate_signing_keys(&retired_kid, &new_next, now, publish_until).await?;
        self.refresh().await?;
        if !rotated {
            return Ok(None);
        }
        let rotation = Rotation {
            retired_kid,
            current_kid: set.next_kid.clone(),
            next_kid: new_next.kid,
            retired_publish_until: publish_until,
        };
        tracing::info!(
            retired = %rotation.retired_kid, current = %rotation.current_kid, next = %rotation.next_kid,
            forced = force, "rotated signing keys"
        );
        Ok(Some(rotation))
    }
}

impl CurrentKey for KeyRing {
    fn signer(&self) -> Arc<Signer> {
        KeyRing::signer(self)
    }
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn seal_context(kid: &str, algorithm: &str) -> Vec<u8> {
    format!("keyward signing key v1\0{kid}\0{algorithm}").into_bytes()
}

fn new_key_row(
    kek: &Kek,
    algorithm: SigningAlgorithm,
    state: KeyState,
    now: i64,
) -> Result<SigningKeyRow, KeyRingError> {
    let (signer, pkcs8) = Signer::generate(algorithm)?;
    let sealed = kek.seal(&seal_context(signer.kid(), algorithm.as_str()), &pkcs8);
    let public_jwk = serde_json::to_string(signer.jwk()).map_err(|e| KeyRingError::Corrupt {
        kid: signer.kid().to_owned(),
        location: "memory".to_owned(),
        reason: e.to_string(),
    })?;
    Ok(SigningKeyRow {
        kid: signer.kid().to_owned(),
        algorithm: algorithm.as_str().to_owned(),
        state,
        sealed_key: Some(sealed),
        public_jwk,
        created_at: now,
        activated_at: (state == KeyState::Current).then_some(now),
        retired_at: None,
        publish_until: None,
    })
}

fn open_signer(store: &Store, kek: &Kek, row: &SigningKeyRow) -> Result<Signer, KeyRingError> {
    let corrupt =
        |reason: String| KeyRingError::Corrupt { kid: row.kid.clone(), location: store.location().to_owned(), reason };
    let algorithm: SigningAlgorithm = row.algorithm.parse().map_err(|e: SignerError| corrupt(e.to_string()))?;
    let sealed = row.sealed_key.as_deref().ok_or_else(|| corrupt("the private key is missing".to_owned()))?;
    let pkcs8 = kek.open(&seal_context(&row.kid, &row.algorithm), sealed).map_err(|source| KeyRingError::Unseal {
        kid: row.kid.clone(),
        location: store.location().to_owned(),
        source,
    })?;
    let signer = Signer::from_pkcs8(algorithm, &pkcs8).map_err(|e| corrupt(e.to_string()))?;
    if signer.kid() != row.kid {
        return Err(corrupt(format!("the private key belongs to key `{}`", signer.kid())));
    }
    Ok(signer)
}

fn build_set(store: &Store, kek: &Kek, now: i64, rows: &[SigningKeyRow]) -> Result<KeySet, KeyRingError> {
    let location = || store.location().to_owned();
    let mut current = None;
    let mut next = None;
    let mut keys: Vec<Jwk> = Vec::new();
    let mut listing = Vec::new();
    for row in rows {
        let published = match row.state {
            KeyState::Current => {
                current = Some((open_signer(store, kek, row)?, row.activated_at.unwrap_or(row.created_at)));
                true
            }
            KeyState::Next => {
                // Opened now so a corrupted next key is found at start, not at the next rotation.
                open_signer(store, kek, row)?;
                next = Some((row.kid.clone(), row.created_at));
                true
            }
            KeyState::Retired => row.publish_until.is_some_and(|until| until >= now),
        };
        if published {
            keys.push(public_jwk(store, row)?);
        }
        listing.push(key_info(row));
    }
    let missing = |state: &str| KeyRingError::Corrupt {
        kid: "-".to_owned(),
        location: location(),
        reason: format!("there is no `{state}` signing key"),
    };
    let (current, current_activated_at) = current.ok_or_else(|| missing("current"))?;
    let (next_kid, next_created_at) = next.ok_or_else(|| missing("next"))?;
    let (jwks, verification) =
        publish(&keys).map_err(|reason| KeyRingError::Corrupt { kid: "-".to_owned(), location: location(), reason })?;
    Ok(KeySet {
        current: Arc::new(current),
        current_activated_at,
        next_kid,
        next_created_at,
        verification: Arc::new(verification),
        jwks: Arc::from(jwks),
        published: keys.len(),
        listing,
    })
}

/// A published key's public JWK, checked to name the row's key.
fn public_jwk(store: &Store, row: &SigningKeyRow) -> Result<Jwk, KeyRingError> {
    let corrupt =
        |reason: String| KeyRingError::Corrupt { kid: row.kid.clone(), location: store.location().to_owned(), reason };
    let jwk: Jwk =
        serde_json::from_str(&row.public_jwk).map_err(|e| corrupt(format!("public_jwk is not a JWK: {e}")))?;
    if jwk.kid != row.kid {
        return Err(corrupt(format!("public_jwk names key `{}`", jwk.kid)));
    }
    Ok(jwk)
}

/// How `keyward keys list` shows a key.
fn key_info(row: &SigningKeyRow) -> KeyInfo {
    KeyInfo {
        kid: row.kid.clone(),
        algorithm: row.algorithm.clone(),
        state: match row.state {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        },
        created_at: row.created_at,
        activated_at: row.activated_at,
        retired_at: row.retired_at,
        publish_until: row.publish_until,
    }
}

/// The JWKS document the broker serves, and the verification key set read back from it (so
/// the broker verifies with exactly what relying parties see).
fn publish(keys: &[Jwk]) -> Result<(String, verify::KeySet), String> {
    #[derive(Serialize)]
    struct JwkSet<'a> {
        keys: &'a [Jwk],
    }
    let jwks = serde_json::to_string(&JwkSet { keys }).map_err(|e| e.to_string())?;
    let verification = verify::KeySet::from_jwks(&jwks).map_err(|e| e.to_string())?;
    Ok((jwks, verification))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::DatabaseLocation;

    const T0: i64 = 1_800_000_000;

    fn settings() -> KeySettings {
        KeySettings {
            algorithm: SigningAlgorithm::ES256,
            rotation_period: Duration::from_secs(24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            clock_skew: Duration::from_secs(30),
        }
    }

    async fn ring(dir: &tempfile::TempDir, kek: &Kek, clock: &ManualClock) -> Result<KeyRing, KeyRingError> {
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("k.db"))).await?;
        KeyRing::load(store, kek.clone(), Arc::new(clock.clone()), settings()).await
    }

    fn published_kids(ring: &KeyRing) -> Vec<String> {
        let jwks: serde_json::Value = serde_json::from_str(&ring.jwks_json()).unwrap_or_default();
        jwks["keys"].as_array().into_iter().flatten().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect()
    }

    #[tokio::test]
    async fn a_key_is_published_before_it_signs_and_stays_until_its_tokens_expire()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let kek = Kek::generate();
        let ring = ring(&dir, &kek, &clock).await?;
        let first = ring.signer().kid().to_owned();
        let before = published_kids(&ring);
        assert_eq!(before.len(), 2, "current and next are published from the start");

        clock.advance(301);
        let rotation = ring.rotate(false).await?.ok_or("rotation happened")?;
        assert_eq!(rotation.retired_kid, first);
        assert!(before.contains(&rotation.current_kid), "the new signing key was in the JWKS before it signed");
        assert_eq!(ring.signer().kid(), rotation.current_kid);
        let after = published_kids(&ring);
        assert!(after.contains(&first), "the retired key is still published");
        assert!(after.contains(&rotation.next_kid));

        let lifetime = 3600 + 30;
        assert_eq!(rotation.retired_publish_until, T0 + 301 + lifetime);
        clock.advance(lifetime);
        ring.refresh().await?;
        assert!(published_kids(&ring).contains(&first), "published up to and including publish_until");
        clock.advance(1);
        ring.refresh().await?;
        assert!(!published_kids(&ring).contains(&first), "gone once every token it signed has expired plus skew");
        Ok(())
    }

    /// A minted token verifies against the keyring's published keys while its key is published,
    /// through a rotation, and stops verifying once the retired key has been pruned.
    #[tokio::test]
    async fn minted_tokens_verify_against_the_published_keys_across_rotation() -> Result<(), Box<dyn std::error::Error>>
    {
        use crate::clock::Clock as _;
        use crate::tokens::verify::{Algorithm, Expectations, VerifyError, verify};
        use crate::tokens::{MintRequest, MintRules, Minter};
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let ring = Arc::new(ring(&dir, &Kek::generate(), &clock).await?);
        let rules = MintRules { allowed_audiences: vec!["vault".into()], ..MintRules::default() };
        let minter = Minter::new("https://kw.example".into(), rules, ring.clone(), Arc::new(clock.clone()));
        let run =
            keyward_proto::claims::RunChain::new("run-7", "stk-1", "network", keyward_proto::claims::Phase::Apply);
        let request = MintRequest::new(run, "vault");
        let pending = minter.mint(request)?;
        assert_eq!(pending.kid(), ring.signer().kid(), "the ring's current key signs");
        let token = pending.token_for_tests().expose();
        let expect = Expectations {
            issuer: "https://kw.example".into(),
            audience: "vault".into(),
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(30),
            require_nbf: true,
        };
        verify(token, &ring.verification_keys(), &expect, T0)?;
        ring.rotate(true).await?;
        verify(token, &ring.verification_keys(), &expect, T0)?;
        clock.advance(3600 + 30 + 1);
        ring.refresh().await?;
        let error = verify(token, &ring.verification_keys(), &expect, clock.now()).err();
        assert_eq!(error, Some(VerifyError::UnknownKey), "the pruned key no longer verifies anything");
        Ok(())
    }

    #[tokio::test]
    async fn on_demand_rotation_waits_for_the_jwks_cache_unless_forced() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let ring = ring(&dir, &Kek::generate(), &clock).await?;
        let current = ring.signer().kid().to_owned();
        clock.advance(10);
        assert!(matches!(ring.rotate(false).await, Err(KeyRingError::TooSoon { retry_secs: 290, .. })));
        assert_eq!(ring.signer().kid(), current, "a refused rotation changes nothing");
        assert!(ring.rotate(true).await?.is_some());
        assert_ne!(ring.signer().kid(), current);
        Ok(())
    }

    #[tokio::test]
    async fn scheduled_rotation_follows_the_period() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let ring = ring(&dir, &Kek::generate(), &clock).await?;
        clock.advance(24 * 3600 - 1);
        assert!(ring.rotate_if_due().await?.is_none());
        clock.advance(1);
        assert!(ring.rotate_if_due().await?.is_some());
        assert!(ring.rotate_if_due().await?.is_none(), "the new key starts a new period");
        Ok(())
    }

    #[tokio::test]
    async fn a_second_replica_sees_the_rotation_and_cannot_double_rotate() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let kek = Kek::generate();
        let a = ring(&dir, &kek, &clock).await?;
        let b = ring(&dir, &kek, &clock).await?;
        assert_eq!(a.signer().kid(), b.signer().kid(), "replicas share one key set");
        let stale = b.signer().kid().to_owned();
        let rotation = a.rotate(true).await?.ok_or("a rotated")?;
        let lost = b
            .store
            .rotate_signing_keys(&stale, &new_key_row(&kek, SigningAlgorithm::ES256, KeyState::Next, T0)?, T0, T0)
            .await?;
        assert!(!lost, "rotating from a stale view is refused");
        b.refresh().await?;
        assert_eq!(b.signer().kid(), rotation.current_kid);
        Ok(())
    }

    #[tokio::test]
    async fn wrong_kek_and_corruption_stop_loading_with_the_key_and_file_named()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::at(T0);
        let kek = Kek::generate();
        let loaded = ring(&dir, &kek, &clock).await?;
        let kid = loaded.signer().kid().to_owned();
        let kids: Vec<String> = loaded.list().into_iter().map(|k| k.kid).collect();

        let error = ring(&dir, &Kek::generate(), &clock).await.err().ok_or("wrong KEK must fail")?;
        let message = error.to_string();
        assert!(kids.iter().any(|k| message.contains(k)), "names the key: {message}");
        assert!(message.contains("k.db") && message.contains("sealed under key-encryption key"), "{message}");

        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("k.db"))).await?;
        let mut rows = store.signing_keys().await?;
        let row = rows.iter_mut().find(|r| r.kid == kid).ok_or("row")?;
        if let Some(byte) = row.sealed_key.as_mut().and_then(|k| k.last_mut()) {
            *byte ^= 0x01;
        }
        sqlx::query("UPDATE signing_keys SET sealed_key = $1 WHERE kid = $2")
            .bind(row.sealed_key.clone())
            .bind(&kid)
            .execute(&store.pool)
            .await?;
        let error = ring(&dir, &kek, &clock).await.err().ok_or("corrupted key must fail")?;
        let message = error.to_string();
        assert!(message.contains(&kid) && message.contains("corrupted or was modified"), "{message}");
        Ok(())
    }
}
