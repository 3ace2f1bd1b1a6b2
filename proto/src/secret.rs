//! A secret string (a password, a database URL with one in it, an HMAC key, a key-encryption
//! key in base64) that never prints.
//!
//! Broker and agent both hold such values and both log: a type whose `Debug` is `Secret(…)`, that
//! has no `Display` and that zeroizes its memory on drop makes printing one a compile error
//! rather than a review finding. Read the value with [`Secret::expose`], at the one place that
//! hands it on.

use std::fmt;

use zeroize::Zeroizing;

/// A secret string. It deserializes from a plain string, compares by value, and never prints.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "String")]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(Zeroizing::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(…)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(…))");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn it_deserializes_from_a_plain_string() -> Result<(), serde_json::Error> {
        let secret: Secret = serde_json::from_str("\"hunter2\"")?;
        assert_eq!(secret, Secret::from("hunter2".to_owned()));
        Ok(())
    }
}
