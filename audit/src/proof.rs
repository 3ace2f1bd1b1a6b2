//! The broker's proof answers, as `GET /v1/audit/proof/inclusion` and
//! `GET /v1/audit/proof/consistency` return them, and their checks.
//!
//! A proof is only as good as the tree head it leads to: the answer carries the broker's heads,
//! and a verifier that does not tie them to a checkpoint signed by the log's key (which it keeps
//! a copy of) has only the broker's word. [`InclusionAnswer::verify`] and
//! [`ConsistencyAnswer::verify`] check the proof against the answer's heads; [`anchor`] ties a
//! head to a signed checkpoint of the same size.
//!
//! ```text
//! inclusion:   {"seq": 2, "size": 9, "leaf_hash": "<hex>", "root": "<hex>", "proof": ["<hex>", …]}
//! consistency: {"old": 4, "new": 9, "old_root": "<hex>", "new_root": "<hex>", "proof": ["<hex>", …]}
//! ```

use keyward_proto::encoding::{hex, hex_decode};
use serde::{Deserialize, Deserializer};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, Hash, ProofError};

/// An inclusion proof answer: entry `seq` is leaf `leaf_hash` of the tree of `size` entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InclusionAnswer {
    /// The entry's sequence number (its leaf index).
    pub seq: u64,
    /// The size of the tree the proof is for.
    pub size: u64,
    /// The entry's leaf hash, as the broker's tree holds it.
    #[serde(deserialize_with = "hash")]
    pub leaf_hash: Hash,
    /// The head of the tree of `size` entries.
    #[serde(deserialize_with = "hash")]
    pub root: Hash,
    /// The audit path, leaf to root.
    #[serde(deserialize_with = "hashes")]
    pub proof: Vec<Hash>,
}

/// A consistency proof answer: the tree of `new` entries extends the tree of `old` entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConsistencyAnswer {
    /// The earlier size.
    pub old: u64,
    /// The later size.
    pub new: u64,
    /// The head at `old`.
    #[serde(deserialize_with = "hash")]
    pub old_root: Hash,
    /// The head at `new`.
    #[serde(deserialize_with = "hash")]
    pub new_root: Hash,
    /// The proof.
    #[serde(deserialize_with = "hashes")]
    pub proof: Vec<Hash>,
}

/// Why a proof answer does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofAnswerError {
    /// The inclusion proof does not lead from the leaf to the head.
    #[error("the broker's inclusion proof for entry {seq} does not verify: {source}")]
    Inclusion {
        /// The entry.
        seq: u64,
        /// How it fails.
        source: ProofError,
    },
    /// The consistency proof does not lead from the old head to the new one.
    #[error(
        "the log of {new} entries is NOT an extension of the checkpoint of {old} entries: history was rewritten ({source})"
    )]
    Consistency {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
        /// How it fails.
        source: ProofError,
    },
    /// A signed checkpoint of the same size has another head than the answer.
    #[error(
        "the answer's head at size {size} is {answer}, but the signed checkpoint of that size says {signed}: \
         the broker answered for another tree"
    )]
    NotTheSignedHead {
        /// The size.
        size: u64,
        /// The answer's head, hex.
        answer: String,
        /// The checkpoint's head, hex.
        signed: String,
    },
    /// No head of the answer has the checkpoint's size.
    #[error("the checkpoint is of {size} entries; the answer's heads are at {sizes}")]
    OtherSize {
        /// The checkpoint's size.
        size: u64,
        /// The answer's sizes.
        sizes: String,
    },
}

impl InclusionAnswer {
    /// Checks that the proof leads from the leaf to the answer's head.
    pub fn verify(&self) -> Result<(), ProofAnswerError> {
        merkle::verify_inclusion(&self.leaf_hash, self.seq, self.size, &self.proof, &self.root)
            .map_err(|source| ProofAnswerError::Inclusion { seq: self.seq, source })
    }

    /// The heads the answer states: `(size, root)`.
    pub fn heads(&self) -> Vec<(u64, Hash)> {
        vec![(self.size, self.root)]
    }
}

impl ConsistencyAnswer {
    /// Checks that the proof leads from the old head to the new one.
    pub fn verify(&self) -> Result<(), ProofAnswerError> {
        merkle::verify_consistency(self.old, self.new, &self.old_root, &self.new_root, &self.proof)
            .map_err(|source| ProofAnswerError::Consistency { old: self.old, new: self.new, source })
    }

    /// The heads the answer states: `(size, root)`, old then new.
    pub fn heads(&self) -> Vec<(u64, Hash)> {
        vec![(self.old, self.old_root), (self.new, self.new_root)]
    }
}

/// Ties one of an answer's `heads` to a verified `checkpoint`: the head of the checkpoint's size
/// must be the signed one.
pub fn anchor(heads: &[(u64, Hash)], checkpoint: &Checkpoint) -> Result<(), ProofAnswerError> {
    let Some((size, root)) = heads.iter().find(|(size, _)| *size == checkpoint.size) else {
        let sizes: Vec<String> = heads.iter().map(|(size, _)| size.to_string()).collect();
        return Err(ProofAnswerError::OtherSize { size: checkpoint.size, sizes: sizes.join(" and ") });
    };
    if *root != checkpoint.root {
        return Err(ProofAnswerError::NotTheSignedHead {
            size: *size,
            answer: hex(root),
            signed: hex(&checkpoint.root),
        });
    }
    Ok(())
}

fn parse_hash<E: serde::de::Error>(text: &str) -> Result<Hash, E> {
    let bytes = hex_decode(text).ok_or_else(|| E::custom("a hash is not hex"))?;
    bytes.try_into().map_err(|_| E::custom("a hash is not 32 bytes"))
}

fn hash<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
    parse_hash(&String::deserialize(deserializer)?)
}

fn hashes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Hash>, D::Error> {
    Vec::<String>::deserialize(deserializer)?.iter().map(|text| parse_hash(text)).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn leaves(n: u8) -> Vec<Hash> {
        (0..n).map(|i| merkle::leaf_hash(&[i])).collect()
    }

    fn hexes(hashes: &[Hash]) -> Vec<String> {
        hashes.iter().map(|h| hex(h)).collect()
    }

    fn inclusion(seq: u64, size: u64) -> serde_json::Value {
        let tree = leaves(9);
        let proof = merkle::inclusion_proof(&tree[..], seq, size).unwrap();
        json!({
            "seq": seq, "size": size,
            "leaf_hash": hex(&tree[usize::try_from(seq).unwrap()]),
            "root": hex(&merkle::root(&tree[..], size).unwrap()),
            "proof": hexes(&proof),
        })
    }

    #[test]
    fn a_brokers_inclusion_answer_verifies_and_an_edited_one_does_not() {
        let answer: InclusionAnswer = serde_json::from_value(inclusion(2, 9)).unwrap();
        assert_eq!(answer.verify(), Ok(()));
        let mut other_leaf = answer.clone();
        other_leaf.leaf_hash = merkle::leaf_hash(b"forged");
        let refused = other_leaf.verify().unwrap_err();
        assert!(
            refused.to_string().starts_with("the broker's inclusion proof for entry 2 does not verify"),
            "{refused}"
        );
        let mut other_seq = answer.clone();
        other_seq.seq = 3;
        assert!(other_seq.verify().is_err());
    }

    #[test]
    fn a_brokers_consistency_answer_verifies_and_a_rewritten_history_does_not() {
        let tree = leaves(9);
        let answer = json!({
            "old": 4, "new": 9,
            "old_root": hex(&merkle::root(&tree[..], 4).unwrap()),
            "new_root": hex(&merkle::root(&tree[..], 9).unwrap()),
            "proof": hexes(&merkle::consistency_proof(&tree[..], 4, 9).unwrap()),
        });
        let answer: ConsistencyAnswer = serde_json::from_value(answer).unwrap();
        assert_eq!(answer.verify(), Ok(()));
        let mut rewritten = answer.clone();
        rewritten.old_root = merkle::root(&leaves(4)[..3], 3).unwrap();
        let refused = rewritten.verify().unwrap_err();
        assert!(refused.to_string().contains("is NOT an extension of the checkpoint of 4 entries"), "{refused}");
    }

    #[test]
    fn a_head_is_anchored_only_by_a_checkpoint_of_its_size_and_root() {
        let answer: InclusionAnswer = serde_json::from_value(inclusion(2, 9)).unwrap();
        let signed = Checkpoint { origin: "kw/audit".into(), size: 9, root: answer.root };
        assert_eq!(anchor(&answer.heads(), &signed), Ok(()));
        let other_root = Checkpoint { root: [7; 32], ..signed.clone() };
        assert!(matches!(anchor(&answer.heads(), &other_root), Err(ProofAnswerError::NotTheSignedHead { .. })));
        let other_size = Checkpoint { size: 8, ..signed };
        assert!(matches!(anchor(&answer.heads(), &other_size), Err(ProofAnswerError::OtherSize { size: 8, .. })));
    }

    #[test]
    fn answers_with_bad_hashes_are_refused_when_read() {
        for (field, value) in [("root", json!("zz")), ("leaf_hash", json!("00")), ("proof", json!(["0"]))] {
            let mut answer = inclusion(2, 9);
            answer[field] = value;
            assert!(serde_json::from_value::<InclusionAnswer>(answer).is_err(), "{field}");
        }
    }
}
