//! The broker's signing keys as stored: loaded and sealed under the KEK, rotated against the
//! database (`next → current → retired`), published as the JWKS, and each rotation recorded in the
//! audit log. The keys sign through `tokens/`, which sees only the current one ([`CurrentKey`]).
//!
//! [`CurrentKey`]: crate::tokens::CurrentKey

mod record;
mod ring;

pub use record::key_rotated;
pub use ring::{KeyInfo, KeyRing, KeyRingError, KeySettings, Rotation};
