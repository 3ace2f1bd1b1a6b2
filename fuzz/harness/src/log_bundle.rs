//! A run's log bundle (`logs::bundle::verify`), as `keyward run logs --verify` checks the JSON a
//! broker served: PEM certificates, the chain to the CA, hex and base64 fields, each chunk.
//!
//! Input: the bundle JSON, verified against its own CA. What must hold for one that verifies:
//! - it reports each lease, with as many chunks as the lease lists and their bytes;
//! - it reads back from its own serialization and verifies again to the same report.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_broker::joblogs::Bundle;
use keyward_broker::joblogs::bundle::verify;

use crate::Outcome;

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Ok(bundle) = serde_json::from_slice::<Bundle>(data) else { return Outcome::Refused };
    let Ok(report) = verify(&bundle, None) else { return Outcome::Refused };
    assert_eq!(report.leases.len(), bundle.leases.len(), "every lease is reported");
    for (lease, reported) in bundle.leases.iter().zip(&report.leases) {
        assert_eq!(reported.chunks, lease.chunks.len() as u64, "every chunk of a verified lease is counted");
        let bytes: usize = lease.chunks.iter().map(|c| STANDARD.decode(&c.data).map_or(0, |d| d.len())).sum();
        assert_eq!(reported.bytes, bytes as u64, "the bytes of a verified lease are its chunks'");
    }
    let serialized = serde_json::to_vec(&bundle).expect("a bundle serializes");
    let back: Bundle = serde_json::from_slice(&serialized).expect("a serialized bundle parses");
    assert_eq!(back, bundle, "a bundle reads back from its serialization");
    assert_eq!(verify(&back, None).ok(), Some(report), "and verifies the same");
    Outcome::Accepted
}
