//! The tree stored as tiles (C2SP tlog-tiles): rows of up to 256 hashes at tree levels 0, 8,
//! 16, … from which every perfect subtree the proofs need is recomputed.
//!
//! Why: storing every interior node costs about two rows per entry; tiles cost one row per 256
//! entries (plus one per 65,536 at the next tile level, …), and a tile is deterministic, so a
//! builder that is interrupted and runs again writes the same bytes. Tile `(L, N)` holds the
//! hashes of the perfect subtrees of height `8L` at positions `256N ..= 256N + 255`; the
//! rightmost tile of each level may be *partial* (fewer than 256 hashes) and grows as the tree
//! does.
//!
//! [`TileBuilder`] extends the tiles by leaves (the broker's integrator); [`TiledTree`] answers
//! [`Subtrees`] from tiles that cover the first `integrated` leaves plus the leaf hashes of the
//! entries after them, so proofs never wait for the integrator.

use std::collections::{BTreeSet, HashMap};

use crate::merkle::{Hash, ProofError, Subtrees, node_hash};

/// Tree levels per tile level.
pub const TILE_HEIGHT: u32 = 8;

/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;

/// A tile's coordinates: tile level `level` (tree level `8 * level`) and index `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    /// Tile level.
    pub level: u32,
    /// Position among the tiles of that level.
    pub index: u64,
}

impl TileId {
    /// The rightmost tile of `level` in a tree of `size` leaves and its width, or `None` when that
    /// tile would be empty (the level's hashes so far fill whole tiles, or there are none).
    pub fn rightmost(level: u32, size: u64) -> Option<(Self, usize)> {
        let hashes = size.checked_shr(TILE_HEIGHT * level).unwrap_or(0);
        let width = (hashes % TILE_WIDTH as u64) as usize;
        (width > 0).then_some((Self { level, index: hashes / TILE_WIDTH as u64 }, width))
    }
}

/// The tiles to read to resume building at `size` leaves: the rightmost partial tile of every
/// level that has one.
pub fn partial_tiles(size: u64) -> Vec<TileId> {
    (0..64 / TILE_HEIGHT).filter_map(|level| TileId::rightmost(level, size).map(|(tile, _)| tile)).collect()
}

/// Where the hashes of perfect subtree `(level, index)` are: the tile, the first position in it,
/// and how many hashes (of tree level `8 * tile.level`) it covers.
fn location(level: u32, index: u64) -> (TileId, usize, usize) {
    let tile_level = level / TILE_HEIGHT;
    let rise = level % TILE_HEIGHT;
    let first = index << rise;
    let tile = TileId { level: tile_level, index: first / TILE_WIDTH as u64 };
    (tile, (first % TILE_WIDTH as u64) as usize, 1 << rise)
}

/// The hash of the perfect subtree over `hashes` (a power of two of them, at most 256; callers
/// never pass none).
fn fold(hashes: &[Hash]) -> Hash {
    let mut row = hashes.to_vec();
    while row.len() > 1 {
        row = row
            .chunks_exact(2)
            .filter_map(|pair| match pair {
                [left, right] => Some(node_hash(left, right)),
                _ => None,
            })
            .collect();
    }
    row.first().copied().unwrap_or_default()
}

/// Tiles covering the first `integrated` leaves, and the leaf hashes of the entries from
/// `integrated` on: every perfect subtree of the tree up to `integrated + recent.len()` leaves.
#[derive(Debug, Clone, Copy)]
pub struct TiledTree<'a> {
    /// Tiles by coordinates, full or partial, as stored.
    pub tiles: &'a HashMap<TileId, Vec<Hash>>,
    /// Leaves the tiles cover.
    pub integrated: u64,
    /// Leaf hashes of entries `integrated ..`.
    pub recent: &'a [Hash],
}

impl TiledTree<'_> {
    /// The tiles needed to answer `wanted` subtrees, and whether any of them needs recent leaves.
    pub fn needed_tiles(integrated: u64, wanted: &[(u32, u64)]) -> (BTreeSet<TileId>, bool) {
        let mut tiles = BTreeSet::new();
        let mut recent = false;
        let mut stack: Vec<(u32, u64)> = wanted.to_vec();
        while let Some((level, index)) = stack.pop() {
            let end = (index + 1) << level;
            let start = index << level;
            if end <= integrated {
                tiles.insert(location(level, index).0);
            } else if start >= integrated || level == 0 {
                recent = true;
            } else {
                stack.push((level - 1, 2 * index));
                stack.push((level - 1, 2 * index + 1));
            }
        }
        (tiles, recent)
    }
}

impl Subtrees for TiledTree<'_> {
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { level, index };
        let (start, end) = (index.checked_shl(level).ok_or(missing.clone())?, (index + 1) << level);
        if end <= self.integrated {
            let (tile, first, count) = location(level, index);
            let hashes = self.tiles.get(&tile).and_then(|h| h.get(first..first + count)).ok_or(missing)?;
            return Ok(fold(hashes));
        }
        if level == 0 {
            let offset = usize::try_from(start - self.integrated).map_err(|_| missing.clone())?;
            return self.recent.get(offset).copied().ok_or(missing);
        }
        if start >= self.integrated + self.recent.len() as u64 {
            return Err(missing);
        }
        Ok(node_hash(&self.hash(level - 1, 2 * index)?, &self.hash(level - 1, 2 * index + 1)?))
    }
}

/// Extends a tree's tiles leaf by leaf, from the partial tiles at the size it resumes at.
#[derive(Debug, Clone)]
pub struct TileBuilder {
    size: u64,
    /// The rightmost (partial) tile of each level, bottom first.
    edges: Vec<Vec<Hash>>,
    /// Tiles that filled up since the last [`TileBuilder::take_tiles`].
    full: Vec<(TileId, Vec<Hash>)>,
}

/// Why stored tiles cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tile {level}/{index} has {found} hashes, a tree of {size} leaves needs {wanted}")]
pub struct TileError {
    /// Tile level.
    pub level: u32,
    /// Tile index.
    pub index: u64,
    /// Hashes the stored tile holds.
    pub found: usize,
    /// Hashes it should hold.
    pub wanted: usize,
    /// The tree size resumed at.
    pub size: u64,
}

impl TileBuilder {
    /// Resumes at `size` leaves; `stored` holds (at least) the tiles [`partial_tiles`] names.
    /// A stored tile may be wider than `size` needs (a later step wrote it, then was undone by
    /// nothing: tiles are deterministic); only its first hashes are used.
    pub fn resume(size: u64, stored: &HashMap<TileId, Vec<Hash>>) -> Result<Self, TileError> {
        let mut edges = Vec::new();
        for level in 0..64 / TILE_HEIGHT {
            let Some((tile, width)) = TileId::rightmost(level, size) else {
                edges.push(Vec::new());
                continue;
            };
            let hashes = stored.get(&tile).map_or(&[][..], Vec::as_slice);
            let Some(edge) = hashes.get(..width) else {
                return Err(TileError { level, index: tile.index, found: hashes.len(), wanted: width, size });
            };
            edges.push(edge.to_vec());
        }
        while edges.last().is_some_and(Vec::is_empty) {
            edges.pop();
        }
        Ok(Self { size, edges, full: Vec::new() })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.edges.len() <= level {
                self.edges.resize_with(level + 1, || Vec::with_capacity(TILE_WIDTH));
            }
            let Some(edge) = self.edges.get_mut(level) else { break };
            edge.push(hash);
            if edge.len() < TILE_WIDTH {
                break;
            }
            let hashes = std::mem::replace(edge, Vec::with_capacity(TILE_WIDTH));
            hash = fold(&hashes);
            // The leaf being pushed is number `size + 1`; the tile that just filled is the last
            // complete one of its level.
            let index = ((self.size + 1) >> (TILE_HEIGHT as usize * level)) / TILE_WIDTH as u64 - 1;
            self.full.push((TileId { level: level as u32, index }, hashes));
            level += 1;
        }
        self.size += 1;
    }

    /// The tiles to store now: every tile that filled up since the last call, then the current
    /// partial tile of each level. Storing them (replacing what is stored under the same
    /// coordinates) is all a step needs to write.
    pub fn take_tiles(&mut self) -> Vec<(TileId, Vec<Hash>)> {
        let mut tiles = std::mem::take(&mut self.full);
        for (level, hashes) in self.edges.iter().enumerate() {
            if let Some((tile, _)) = TileId::rightmost(level as u32, self.size) {
                tiles.push((tile, hashes.clone()));
            }
        }
        tiles
    }

    /// The tree head at the current size.
    pub fn root(&self) -> Result<Hash, ProofError> {
        crate::merkle::root(&self.frontier_tree(), self.size)
    }

    /// The perfect subtrees the tree ends with (see [`crate::merkle::frontier`]), in that order.
    pub fn frontier(&self) -> Result<Vec<Hash>, ProofError> {
        let tree = self.frontier_tree();
        crate::merkle::frontier(self.size).into_iter().map(|(level, index)| tree.hash(level, index)).collect()
    }

    /// The right edge as a [`Subtrees`]: every frontier subtree of a level `8L + r` is made of
    /// hashes in the rightmost tile of level `L`.
    fn frontier_tree(&self) -> EdgeTree<'_> {
        EdgeTree { size: self.size, edges: &self.edges }
    }
}

struct EdgeTree<'a> {
    size: u64,
    edges: &'a [Vec<Hash>],
}

impl Subtrees for EdgeTree<'_> {
    fn hash(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { level, index };
        let (tile, first, count) = location(level, index);
        let Some((edge, _)) = TileId::rightmost(tile.level, self.size) else { return Err(missing) };
        if edge != tile {
            return Err(missing);
        }
        let hashes = self.edges.get(tile.level as usize).and_then(|h| h.get(first..first + count)).ok_or(missing)?;
        Ok(fold(hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, Query, leaf_hash};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Builds tiles for `leaves[..cut]` in steps, as an integrator would, returning them stored.
    fn build(leaves: &[Hash], steps: &[u64]) -> (HashMap<TileId, Vec<Hash>>, u64) {
        let mut stored = HashMap::new();
        let mut size = 0;
        for &step_end in steps {
            let mut builder = TileBuilder::resume(size, &stored).unwrap();
            for leaf in &leaves[size as usize..step_end as usize] {
                builder.push(*leaf);
            }
            assert_eq!(builder.root().unwrap(), merkle::root(leaves, step_end).unwrap());
            let frontier: Vec<Hash> =
                merkle::frontier(step_end).into_iter().map(|(l, i)| Subtrees::hash(leaves, l, i).unwrap()).collect();
            assert_eq!(builder.frontier().unwrap(), frontier);
            for (tile, hashes) in builder.take_tiles() {
                stored.insert(tile, hashes);
            }
            size = step_end;
        }
        (stored, size)
    }

    #[test]
    fn tiles_answer_every_proof_the_leaves_answer() {
        let all = leaves(70_000);
        let (tiles, integrated) = build(&all, &[1, 255, 256, 257, 5_000, 65_536, 65_537, 66_000]);
        for size in [66_000u64, 66_001, 66_517, 70_000] {
            let tree = TiledTree { tiles: &tiles, integrated, recent: &all[integrated as usize..size as usize] };
            assert_eq!(merkle::root(&tree, size).unwrap(), merkle::root(&all[..], size).unwrap(), "root {size}");
            for index in [0, 1, 255, 256, 65_535, 65_536, 65_999, size - 1] {
                let want = merkle::inclusion_proof(&all[..], index, size).unwrap();
                assert_eq!(merkle::inclusion_proof(&tree, index, size).unwrap(), want, "inclusion {index}/{size}");
            }
            for old in [1, 256, 65_536, 65_537, 66_000, size] {
                let want = merkle::consistency_proof(&all[..], old, size).unwrap();
                assert_eq!(merkle::consistency_proof(&tree, old, size).unwrap(), want, "consistency {old}/{size}");
            }
        }
    }

    #[test]
    fn needed_tiles_are_all_a_proof_reads() {
        let all = leaves(70_000);
        let (tiles, integrated) = build(&all, &[66_000]);
        let size = 69_123;
        let query = Query::Consistency { old: 65_537, new: size };
        let wanted: Vec<_> = merkle::needed_subtrees(query).unwrap().into_iter().collect();
        let (needed, recent) = TiledTree::needed_tiles(integrated, &wanted);
        assert!(recent, "the proof reaches past the integrated leaves");
        let only: HashMap<TileId, Vec<Hash>> =
            tiles.iter().filter(|(id, _)| needed.contains(id)).map(|(id, h)| (*id, h.clone())).collect();
        assert!(only.len() < tiles.len());
        let tree = TiledTree { tiles: &only, integrated, recent: &all[integrated as usize..size as usize] };
        assert_eq!(
            merkle::consistency_proof(&tree, 65_537, size).unwrap(),
            merkle::consistency_proof(&all[..], 65_537, size).unwrap()
        );
    }

    #[test]
    fn tiles_have_the_tlog_tiles_layout() {
        let all = leaves(65_536 + 300);
        let (tiles, _) = build(&all, &[65_536 + 300]);
        // Level 0: 257 full tiles and one of 44 hashes; level 1: a full tile (its hashes are the
        // roots of the level-0 tiles 0..=255) and one of one hash (the root of tile 256); level 2:
        // one hash, the root of level-1 tile 0, i.e. of the first 65,536 leaves.
        assert_eq!(tiles[&TileId { level: 0, index: 257 }].len(), 44);
        assert_eq!(tiles[&TileId { level: 0, index: 3 }][..], all[768..1024]);
        assert_eq!(tiles[&TileId { level: 1, index: 0 }][3], merkle::root(&all[768..1024], 256).unwrap());
        assert_eq!(tiles[&TileId { level: 1, index: 1 }], vec![merkle::root(&all[65_536..65_792], 256).unwrap()]);
        assert_eq!(tiles[&TileId { level: 2, index: 0 }], vec![merkle::root(&all[..], 65_536).unwrap()]);
        assert_eq!(tiles.len(), 258 + 2 + 1);
    }

    #[test]
    fn resuming_from_a_short_tile_is_refused() {
        let all = leaves(300);
        let (mut tiles, _) = build(&all, &[300]);
        tiles.get_mut(&TileId { level: 0, index: 1 }).unwrap().truncate(10);
        let error = TileBuilder::resume(300, &tiles).unwrap_err();
        assert_eq!((error.found, error.wanted), (10, 44));
    }

    #[test]
    fn a_subtree_past_the_known_leaves_is_missing() {
        let all = leaves(10);
        let tiles = HashMap::new();
        let tree = TiledTree { tiles: &tiles, integrated: 0, recent: &all };
        assert!(matches!(tree.hash(4, 0), Err(ProofError::Missing { .. })));
        assert_eq!(tree.hash(3, 0).unwrap(), merkle::root(&all[..], 8).unwrap());
    }
}
