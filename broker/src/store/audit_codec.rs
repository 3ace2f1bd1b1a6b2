//! The audit log's batch bodies at rest: the entries of one committed batch, each as its kind,
//! its lookup keys and its canonical JSON (the bytes that were hashed, unchanged), length-prefixed
//! and compressed together with zstd.
//!
//! Why one blob per batch: the append transaction then writes one row however many entries it
//! commits, and consecutive entries (which repeat most of their context chain) compress about
//! ten-fold together, against under two-fold one by one. The kind and lookup keys ride along so
//! the integrator builds the lookup index from the blob alone.
//!
//! Layout before compression, per entry: `u32` kind length, kind, `u16` key count, per key `u32`
//! length and key, `u32` body length, body; all little-endian.

use super::StoreError;

/// `audit_batches.codec` of bodies written by this version.
pub(crate) const ZSTD_V1: i32 = 1;

/// zstd's fastest standard level: ~10x on canonical entries at about a gigabyte per second.
const LEVEL: i32 = 1;

/// One entry as a batch holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchEntry {
    /// Stable kind.
    pub(crate) kind: String,
    /// Lookup keys (`run:<id>`, `akid:<id>`…), without the implicit `kind:<kind>`.
    pub(crate) refs: Vec<String>,
    /// Canonical JSON, as hashed.
    pub(crate) body: String,
}

/// Builds the raw (uncompressed) body of a batch, entry by entry.
#[derive(Debug, Default)]
pub(crate) struct BatchEncoder {
    raw: Vec<u8>,
}

impl BatchEncoder {
    /// An encoder sized for about `entries` entries.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        Self { raw: Vec::with_capacity(entries * 1024) }
    }

    /// Adds one entry; returns the canonical JSON as stored, for hashing.
    pub(crate) fn push(&mut self, kind: &str, refs: &[String], body: &str) -> Result<&[u8], StoreError> {
        put(&mut self.raw, kind.as_bytes())?;
        let count = u16::try_from(refs.len()).map_err(|_| too_large("lookup keys"))?;
        self.raw.extend_from_slice(&count.to_le_bytes());
        for reference in refs {
            put(&mut self.raw, reference.as_bytes())?;
        }
        put(&mut self.raw, body.as_bytes())?;
        let start = self.raw.len() - body.len();
        Ok(self.raw.get(start..).unwrap_or_default())
    }

    /// The compressed body, for `audit_batches.body` with codec [`ZSTD_V1`].
    pub(crate) fn finish(self) -> Result<Vec<u8>, StoreError> {
        zstd::bulk::compress(&self.raw, LEVEL).map_err(|e| StoreError::Append(format!("compressing a batch: {e}")))
    }
}

fn put(raw: &mut Vec<u8>, field: &[u8]) -> Result<(), StoreError> {
    let length = u32::try_from(field.len()).map_err(|_| too_large("an entry field"))?;
    raw.extend_from_slice(&length.to_le_bytes());
    raw.extend_from_slice(field);
    Ok(())
}

fn too_large(what: &str) -> StoreError {
    StoreError::Append(format!("{what} too large for a batch body"))
}

/// Decodes a stored batch body of `n` entries.
pub(crate) fn decode(codec: i32, body: &[u8], n: u64) -> Result<Vec<BatchEntry>, StoreError> {
    if codec != ZSTD_V1 {
        return Err(StoreError::Corrupt(format!("audit batch codec {codec} is unknown to this broker")));
    }
    let raw = zstd::stream::decode_all(body).map_err(|e| StoreError::Corrupt(format!("audit batch body: {e}")))?;
    let mut reader = Reader { raw: &raw };
    let capacity = usize::try_from(n).unwrap_or(0).min(1 << 16);
    let mut entries = Vec::with_capacity(capacity);
    for _ in 0..n {
        let kind = reader.text()?;
        let count = u16::from_le_bytes(reader.take::<2>()?);
        let refs = (0..count).map(|_| reader.text()).collect::<Result<_, _>>()?;
        entries.push(BatchEntry { kind, refs, body: reader.text()? });
    }
    if !reader.raw.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "audit batch body has {} bytes past its {n} entries",
            reader.raw.len()
        )));
    }
    Ok(entries)
}

struct Reader<'a> {
    raw: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let (head, rest) = self.raw.split_first_chunk::<N>().ok_or_else(truncated)?;
        self.raw = rest;
        Ok(*head)
    }

    fn text(&mut self) -> Result<String, StoreError> {
        let length = usize::try_from(u32::from_le_bytes(self.take::<4>()?)).map_err(|_| truncated())?;
        let (field, rest) = self.raw.split_at_checked(length).ok_or_else(truncated)?;
        self.raw = rest;
        String::from_utf8(field.to_vec()).map_err(|_| StoreError::Corrupt("audit batch body is not UTF-8".to_owned()))
    }
}

fn truncated() -> StoreError {
    StoreError::Corrupt("audit batch body is truncated".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_byte_for_byte() {
        let mut encoder = BatchEncoder::with_capacity(2);
        let refs = vec!["run:r1".to_owned(), "akid:ASIA1".to_owned()];
        assert_eq!(encoder.push("credentials.issued", &refs, "{\"a\":\"é\"}").unwrap(), "{\"a\":\"é\"}".as_bytes());
        encoder.push("token.minted", &[], "{}").unwrap();
        let body = encoder.finish().unwrap();
        let entries = decode(ZSTD_V1, &body, 2).unwrap();
        assert_eq!(entries[0], BatchEntry { kind: "credentials.issued".into(), refs, body: "{\"a\":\"é\"}".into() });
        assert_eq!(entries[1], BatchEntry { kind: "token.minted".into(), refs: vec![], body: "{}".into() });
    }

    #[test]
    fn a_damaged_body_is_corrupt_not_a_panic() {
        let mut encoder = BatchEncoder::default();
        encoder.push("k", &[], "{}").unwrap();
        let body = encoder.finish().unwrap();
        assert!(matches!(decode(ZSTD_V1, &body, 2), Err(StoreError::Corrupt(_))), "fewer entries than claimed");
        assert!(matches!(decode(ZSTD_V1, &body, 0), Err(StoreError::Corrupt(_))), "bytes left over");
        assert!(matches!(decode(ZSTD_V1, &body[..body.len() / 2], 1), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode(7, &body, 1), Err(StoreError::Corrupt(m)) if m.contains("codec 7")));
    }
}
