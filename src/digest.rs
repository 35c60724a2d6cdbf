//! A sha256 digest kept as its 32 bytes and written as 64 lowercase hex digits wherever it
//! leaves the program (report, ledger, `plan --json`, `Display`). Its hex form as a `String`
//! would take ~100 bytes; a run keeps one or two a job (job hash, image digests).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// From 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Sha256Digest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Sha256Digest(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Sha256Digest {
        Sha256Digest(bytes)
    }
}

/// What `sha2::Sha256` computes (`hasher.finalize().into()`).
impl From<sha2::digest::Output<sha2::Sha256>> for Sha256Digest {
    fn from(output: sha2::digest::Output<sha2::Sha256>) -> Sha256Digest {
        Sha256Digest(output.into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Compares with a digest in hex, as the ledger and `sha256sum` write it.
impl PartialEq<str> for Sha256Digest {
    fn eq(&self, other: &str) -> bool {
        Sha256Digest::from_hex(other).is_some_and(|d| d == *self)
    }
}

impl PartialEq<String> for Sha256Digest {
    fn eq(&self, other: &String) -> bool {
        *self == *other.as_str()
    }
}

impl PartialEq<Sha256Digest> for String {
    fn eq(&self, other: &Sha256Digest) -> bool {
        *other == *self.as_str()
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sha256Digest, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Sha256Digest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected a sha256 as 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_comparisons() {
        let hex = "00ff".repeat(16);
        let digest = Sha256Digest::from_hex(&hex).unwrap();
        assert_eq!(digest.to_string(), hex);
        assert_eq!(digest, hex);
        assert_eq!(hex, digest);
        assert_eq!(Sha256Digest::from_hex(&hex.to_uppercase()), Some(digest));
        assert!(Sha256Digest::from_hex("00ff").is_none());
        assert!(Sha256Digest::from_hex(&"zz".repeat(32)).is_none());
        assert_ne!(digest, "11".repeat(32));

        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), digest);
        let error = serde_json::from_str::<Sha256Digest>("\"abc\"").unwrap_err();
        assert!(error.to_string().contains("64 hex digits"), "{error}");
    }
}
