//! Shards: `--shard K/N` splits a book's jobs over N processes with no coordinator.
//!
//! A job belongs to shard `K` (counted from 0, as Kubernetes' `JOB_COMPLETION_INDEX` and
//! GitHub's `strategy.job-index` count) when the first eight bytes of the sha256 of its key,
//! read as a big-endian number, leave `K` when divided by `N`. The key alone decides: adding
//! a page, a variant or a chapter moves no other job to another shard, and every process
//! computes the same split from the same manifests.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variable read when `--shard` is not given.
pub const SHARD_ENV: &str = "PLASMA_SHARD";

/// The most shards a book may be split into.
pub const MAX_SHARDS: u32 = 10_000;

/// One shard of `count`: jobs whose key hashes to `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// From 0 to `count - 1`.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The shard `key` belongs to among `count`.
    pub fn of_key(key: &str, count: u32) -> u32 {
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u32::try_from(u64::from_be_bytes(first) % u64::from(count.max(1)))
            .expect("a remainder of a u32 fits a u32")
    }

    /// Whether the job with this key is this shard's.
    pub fn selects(&self, key: &str) -> bool {
        Shard::of_key(key, self.count) == self.index
    }

    /// Parse `K/N`. `K` is a number from 0 to N-1, or the name of an environment variable
    /// holding one (`JOB_COMPLETION_INDEX/4`), read through `env`. The error says what is
    /// wrong and what is expected.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        const FORM: &str = "a shard is K/N: K from 0 to N-1 (or the name of an environment variable holding K, e.g. JOB_COMPLETION_INDEX/4), N from 1 to 10000";
        let Some((k, n)) = text.split_once('/') else {
            return Err(format!("`{text}` is not K/N; {FORM}"));
        };
        let count: u32 = match n.trim().parse() {
            Ok(n) if (1..=MAX_SHARDS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`{text}`: N must be a number from 1 to {MAX_SHARDS}; {FORM}"
                ));
            }
        };
        let k = k.trim();
        let is_name = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let (value, from) = if is_name {
            match env(k) {
                Some(value) => (value.trim().to_owned(), format!(" ({k}={value})")),
                None => {
                    return Err(format!(
                        "`{text}`: the environment variable {k} is not set; {FORM}"
                    ));
                }
            }
        } else {
            (k.to_owned(), String::new())
        };
        match value.parse::<u32>() {
            Ok(index) if index < count => Ok(Shard { index, count }),
            Ok(index) => Err(format!(
                "`{text}`{from}: K is {index}, but shards are counted from 0, so K must be 0 to {}; {FORM}",
                count - 1
            )),
            Err(_) => Err(format!(
                "`{text}`{from}: K `{value}` is not a number; {FORM}"
            )),
        }
    }
}

/// `2/4`: shard 2 (from 0) of 4.
impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_shard_is_k_of_n_counted_from_zero_or_read_from_a_variable() {
        assert_eq!(
            Shard::parse("0/4", no_env),
            Ok(Shard { index: 0, count: 4 })
        );
        assert_eq!(
            Shard::parse("3/4", no_env),
            Ok(Shard { index: 3, count: 4 })
        );
        let env = |name: &str| (name == "JOB_COMPLETION_INDEX").then(|| "2".to_owned());
        assert_eq!(
            Shard::parse("JOB_COMPLETION_INDEX/3", env),
            Ok(Shard { index: 2, count: 3 })
        );
        for bad in ["4/4", "1", "a/b/c", "-1/4", "0/0", "x/2", "1/10001", ""] {
            let err = Shard::parse(bad, no_env).unwrap_err();
            assert!(err.contains("K/N"), "{bad}: {err}");
        }
        assert!(
            Shard::parse("4/4", no_env)
                .unwrap_err()
                .contains("counted from 0, so K must be 0 to 3")
        );
        assert!(
            Shard::parse("INDEX/2", no_env)
                .unwrap_err()
                .contains("INDEX is not set")
        );
    }

    #[test]
    fn every_key_is_in_exactly_one_shard_and_adding_keys_moves_none() {
        let keys: Vec<String> = (1..=400).map(|p| crate::params::job_key(1, p, 1)).collect();
        let count = 4;
        let mut sizes = [0usize; 4];
        for key in &keys {
            let owners: Vec<u32> = (0..count)
                .filter(|&index| Shard { index, count }.selects(key))
                .collect();
            assert_eq!(owners.len(), 1, "{key}");
            sizes[owners[0] as usize] += 1;
        }
        // A hash, not a round robin, but not lopsided either.
        assert!(sizes.iter().all(|&n| (60..=140).contains(&n)), "{sizes:?}");
        // The key alone decides: more pages leave the first 400 where they were.
        let before: Vec<u32> = keys.iter().map(|k| Shard::of_key(k, count)).collect();
        let more: Vec<String> = (1..=800).map(|p| crate::params::job_key(1, p, 1)).collect();
        let after: Vec<u32> = more[..400]
            .iter()
            .map(|k| Shard::of_key(k, count))
            .collect();
        assert_eq!(before, after);
    }
}
