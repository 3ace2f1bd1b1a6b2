//! RFC 6962 (§2.1) Merkle trees: hashing, tree heads, inclusion and consistency proofs, and their
//! verification.
//!
//! The algorithms are written once, over any [`Subtrees`] source of *perfect* subtree hashes
//! (a subtree of `2^level` leaves starting at `index * 2^level`). The broker's source is the
//! `audit_nodes` table; `keyward audit verify` and `keyward-verify` use the leaf hashes of an
//! export. Because which subtrees an algorithm needs depends only on the sizes involved, never on
//! hash values, [`needed_subtrees`] can list them up front, so a database-backed proof is one
//! query.

use std::collections::{BTreeSet, HashMap};

use aws_lc_rs::digest;

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&[0]);
    context.update(data);
    to_hash(context.finish())
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&[1]);
    context.update(left);
    context.update(right);
    to_hash(context.finish())
}

/// The head of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    to_hash(digest::digest(&digest::SHA256, b""))
}

fn to_hash(digest: digest::Digest) -> Hash {
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Sizes or indexes out of range (`index ≥ size`, `old > new`, …).
    #[error("{0}")]
    Range(String),
    /// A subtree the proof needs is not available.
    #[error("the tree has no node at level {level}, index {index}")]
    Missing {
        /// Subtree height.
        level: u32,
        /// Subtree position at that height.
        index: u64,
    },
    /// The proof does not lead to the expected root.
    #[error("the proof does not match the tree head")]
    Mismatch,
}

/// Hashes of perfect subtrees: `hash(level, index)` covers leaves
/// `[index·2^level, (index+1)·2^level)`.
pub trait Subtrees {
    /// The subtree's hash.
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError>;
}

/// Leaf hashes in memory; interior subtrees are computed on demand (for offline verification and
/// tests, where all leaves are at hand anyway).
impl Subtrees for [Hash] {
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        let width = 1u64 << level;
        let start = index * width;
        let end = start + width;
        let missing = ProofError::Missing { level, index };
        if end > self.len() as u64 {
            return Err(missing);
        }
        if level == 0 {
            return self.get(usize::try_from(start).map_err(|_| missing.clone())?).copied().ok_or(missing);
        }
        Ok(node_hash(&self.hash(level - 1, index * 2)?, &self.hash(level - 1, index * 2 + 1)?))
    }
}

/// Subtree hashes fetched or computed ahead of time, keyed by `(level, index)`: what the broker
/// reads from `audit_nodes` for one proof.
#[derive(Debug, Clone, Default)]
pub struct NodeMap(pub HashMap<(u32, u64), Hash>);

impl Subtrees for NodeMap {
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        self.0.get(&(level, index)).copied().ok_or(ProofError::Missing { level, index })
    }
}

/// The largest power of two strictly less than `n` (`n ≥ 2`): RFC 6962's split point.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for `start < end`.
fn range_hash(tree: &(impl Subtrees + ?Sized), start: u64, end: u64) -> Result<Hash, ProofError> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return tree.hash(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    Ok(node_hash(&range_hash(tree, start, start + k)?, &range_hash(tree, start + k, end)?))
}

/// The tree head over the first `size` leaves.
pub fn root(tree: &(impl Subtrees + ?Sized), size: u64) -> Result<Hash, ProofError> {
    if size == 0 { Ok(empty_root()) } else { range_hash(tree, 0, size) }
}

/// RFC 6962 `PATH(index, D[0:size])`: the audit path of one leaf, bottom-up.
pub fn inclusion_proof(tree: &(impl Subtrees + ?Sized), index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!("entry {index} is not in a tree of {size} entries")));
    }
    let mut proof = Vec::new();
    path(tree, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path(tree: &(impl Subtrees + ?Sized), m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(tree, m, start, start + k, out)?;
        out.push(range_hash(tree, start + k, end)?);
    } else {
        path(tree, m - k, start + k, end, out)?;
        out.push(range_hash(tree, start, start + k)?);
    }
    Ok(())
}

/// RFC 6962 `PROOF(old, D[0:new])`: that the tree of `old` leaves is a prefix of the tree of `new`.
pub fn consistency_proof(tree: &(impl Subtrees + ?Sized), old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::Range(format!("size {old} is larger than size {new}")));
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(tree, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof(
    tree: &(impl Subtrees + ?Sized),
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_hash(tree, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(tree, m, start, start + k, complete, out)?;
        out.push(range_hash(tree, start + k, end)?);
    } else {
        subproof(tree, m - k, start + k, end, false, out)?;
        out.push(range_hash(tree, start, start + k)?);
    }
    Ok(())
}

/// Records which subtrees an algorithm asks for (answering with zeros).
struct Recorder(std::cell::RefCell<BTreeSet<(u32, u64)>>);

impl Subtrees for Recorder {
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        self.0.borrow_mut().insert((level, index));
        Ok([0; 32])
    }
}

/// What a proof or tree head needs from storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The head of a tree of this size.
    Root(u64),
    /// The inclusion proof of entry `index` in a tree of `size`.
    Inclusion {
        /// The entry.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The consistency proof between two sizes.
    Consistency {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
}

/// The `(level, index)` subtrees that answering `query` reads, so they can be fetched at once.
pub fn needed_subtrees(query: Query) -> Result<BTreeSet<(u32, u64)>, ProofError> {
    let recorder = Recorder(std::cell::RefCell::new(BTreeSet::new()));
    match query {
        Query::Root(size) => drop(root(&recorder, size)?),
        Query::Inclusion { index, size } => drop(inclusion_proof(&recorder, index, size)?),
        Query::Consistency { old, new } => drop(consistency_proof(&recorder, old, new)?),
    }
    Ok(recorder.0.into_inner())
}

/// The perfect subtrees that a tree of `size` leaves ends with, largest first: what an append
/// needs to know to extend it (the "frontier").
pub fn frontier(size: u64) -> Vec<(u32, u64)> {
    let mut nodes = Vec::new();
    let mut start = 0;
    for level in (0..64).rev() {
        let width = 1u64 << level;
        if size & width != 0 {
            nodes.push((level, start / width));
            start += width;
        }
    }
    nodes
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!("entry {index} is not in a tree of {size} entries")));
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::Mismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root { Ok(()) } else { Err(ProofError::Mismatch) }
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Range(format!("size {old} is larger than size {new}")));
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    if old == 0 {
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let Some((first, rest)) = path.split_first() else { return Err(ProofError::Mismatch) };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::Mismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && fr == *old_root && sr == *new_root { Ok(()) } else { Err(ProofError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_proto::encoding::hex;

    /// The RFC 6962 reference leaves used by Certificate Transparency implementations.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Their published tree heads, for sizes 0 through 8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(l)).collect()
    }

    fn hexes(proof: &[Hash]) -> Vec<String> {
        proof.iter().map(|h| hex(h)).collect()
    }

    #[test]
    fn tree_heads_match_the_published_vectors() {
        let leaves = leaves();
        for (size, expected) in ROOTS.iter().enumerate() {
            assert_eq!(hex(&root(&leaves[..], size as u64).unwrap()), *expected, "size {size}");
        }
    }

    #[test]
    fn proofs_match_the_published_vectors() {
        let leaves = leaves();
        assert_eq!(
            hexes(&inclusion_proof(&leaves[..], 0, 8).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        assert_eq!(
            hexes(&inclusion_proof(&leaves[..], 5, 8).unwrap()),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            hexes(&consistency_proof(&leaves[..], 2, 5).unwrap()),
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]
        );
        assert_eq!(consistency_proof(&leaves[..], 1, 8).unwrap(), inclusion_proof(&leaves[..], 0, 8).unwrap());
    }

    /// Every proof in every small tree verifies, and changing anything about it makes it fail.
    #[test]
    fn every_proof_round_trips_and_every_tampering_fails() {
        let leaves: Vec<Hash> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for size in 1..=leaves.len() as u64 {
            let head = root(&leaves[..], size).unwrap();
            for index in 0..size {
                let proof = inclusion_proof(&leaves[..], index, size).unwrap();
                let leaf = leaves[index as usize];
                verify_inclusion(&leaf, index, size, &proof, &head).unwrap();
                assert!(verify_inclusion(&leaves[(index as usize + 1) % 37], index, size, &proof, &head).is_err());
                if size > 1 {
                    assert!(verify_inclusion(&leaf, (index + 1) % size, size, &proof, &head).is_err());
                }
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(verify_inclusion(&leaf, index, size, &bad, &head).is_err());
                }
            }
            for old in 0..=size {
                let proof = consistency_proof(&leaves[..], old, size).unwrap();
                let old_head = root(&leaves[..], old).unwrap();
                verify_consistency(old, size, &old_head, &head, &proof).unwrap();
                if old > 0 && old < size {
                    let forked = node_hash(&old_head, &old_head);
                    assert!(verify_consistency(old, size, &forked, &head, &proof).is_err(), "{old}->{size}");
                    assert!(verify_consistency(old, size, &old_head, &forked, &proof).is_err());
                    assert!(verify_consistency(old, size, &old_head, &head, &proof[1..]).is_err());
                }
            }
        }
    }

    #[test]
    fn needed_subtrees_are_exactly_what_the_algorithms_read() {
        let leaves: Vec<Hash> = (0u32..21).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for query in [Query::Root(21), Query::Inclusion { index: 13, size: 21 }, Query::Consistency { old: 6, new: 21 }]
        {
            let needed = needed_subtrees(query).unwrap();
            let subset: Vec<Hash> = leaves.clone();
            // A source that only knows the listed subtrees answers the query the same way.
            struct Only<'a>(&'a [Hash], &'a BTreeSet<(u32, u64)>);
            impl Subtrees for Only<'_> {
                fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
                    if self.1.contains(&(level, index)) {
                        self.0.hash(level, index)
                    } else {
                        Err(ProofError::Missing { level, index })
                    }
                }
            }
            let only = Only(&subset, &needed);
            match query {
                Query::Root(size) => assert_eq!(root(&only, size), root(&leaves[..], size)),
                Query::Inclusion { index, size } => {
                    assert_eq!(inclusion_proof(&only, index, size), inclusion_proof(&leaves[..], index, size));
                }
                Query::Consistency { old, new } => {
                    assert_eq!(consistency_proof(&only, old, new), consistency_proof(&leaves[..], old, new));
                }
            }
        }
        assert_eq!(frontier(21), [(4, 0), (2, 4), (0, 20)]);
        assert!(frontier(0).is_empty());
    }
}
