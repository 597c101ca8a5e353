//! Users, bearer-token hashes and usage counters in the store. These records are small
//! JSON values keyed by userName (users, usage) or by the SHA-256 of a token (tokens).
//! User changes are rare (CLI and admin socket); they take the writer mutex (so a backup
//! sees them whole), keep an undo like group writes, and are flushed before they return.

use serde::{Deserialize, Serialize};

use super::{Error, Kind, Op, Store};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            other => Err(format!("role must be read or write, not {other:?}")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
        })
    }
}

/// A user as stored. The API key itself is never stored: only its argon2id PHC string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub account: String,
    pub role: Role,
    pub daily_limit: Option<u64>,
    pub disabled: bool,
    /// argon2id PHC string of the current API key.
    pub key_hash: String,
    /// Bumped on every key rotation; tokens carry the generation they were issued for.
    pub key_generation: u64,
    /// When the current key was created (ms).
    pub key_created: i64,
    pub created: i64,
}

/// A bearer token as stored under the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub key_generation: u64,
    pub issued: i64,
    pub expires: i64,
}

/// Persisted usage counters of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageRecord {
    pub total: u64,
    /// UTC day number `daily` counts for.
    pub day: i64,
    pub daily: u64,
    /// Last authenticated request (ms), 0 when never.
    pub last_used: i64,
}

/// A token or usage write that sled refused. Unlike a group or user write it does
/// not fail the store: these writes stay outside the overlay and promise nothing
/// (`space.rs`), and only the flusher takes them to the disk.
fn unfailing_write(source: sled::Error) -> Error {
    Error::Storage {
        during: "write",
        source,
    }
}

fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Encode { what, source }
}

impl Store {
    /// All users, sorted by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, Error> {
        let mut out = Vec::new();
        for item in self.users.iter() {
            let (_, v) = item.map_err(|e| self.read_err(e))?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, Error> {
        match self
            .users
            .get(name.as_bytes())
            .map_err(|e| self.read_err(e))?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Creates or replaces a user and makes it durable. When `revoke` is set, every token
    /// of the user is deleted in the same transaction.
    pub fn put_user(&self, user: &UserRecord, revoke: bool) -> Result<(), Error> {
        let value = serde_json::to_vec(user).map_err(encode("a user record"))?;
        let mut w = self.write_lock()?;
        let mut ops: Vec<Op> = vec![(Kind::Users, user.name.as_bytes().to_vec(), Some(value))];
        if revoke {
            for k in self.token_keys_of(&user.name)? {
                ops.push((Kind::Tokens, k, None));
            }
        }
        let seq = w.next_change.saturating_sub(1);
        self.apply_ops(&mut w, &ops, seq)?;
        drop(w);
        self.flush_blocking()
    }

    /// Removes a user, its tokens and its counters (its account's groups stay).
    pub fn remove_user(&self, name: &str) -> Result<bool, Error> {
        let mut w = self.write_lock()?;
        let existed = self
            .users
            .get_latest(name.as_bytes())
            .map_err(|e| self.read_err(e))?
            .is_some();
        let mut ops: Vec<Op> = vec![
            (Kind::Users, name.as_bytes().to_vec(), None),
            (Kind::Usage, name.as_bytes().to_vec(), None),
        ];
        for k in self.token_keys_of(name)? {
            ops.push((Kind::Tokens, k, None));
        }
        let seq = w.next_change.saturating_sub(1);
        self.apply_ops(&mut w, &ops, seq)?;
        drop(w);
        self.flush_blocking()?;
        Ok(existed)
    }

    fn token_keys_of(&self, user: &str) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        for (k, rec) in self.tokens()? {
            if rec.user == user {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Every stored token (hash, record), for loading the in-memory table.
    pub fn tokens(&self) -> Result<Vec<(Vec<u8>, TokenRecord)>, Error> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if let Ok(rec) = serde_json::from_slice::<TokenRecord>(&v) {
                out.push((k.to_vec(), rec));
            }
        }
        Ok(out)
    }

    /// Stores a new token hash and deletes evicted ones, atomically. Tokens are not
    /// fsynced before the answer: losing one in a crash only means logging in again.
    pub fn put_token(
        &self,
        hash: &[u8],
        rec: &TokenRecord,
        evicted: &[Vec<u8>],
    ) -> Result<(), Error> {
        let value = serde_json::to_vec(rec).map_err(encode("a token record"))?;
        let mut batch = self.tokens.batch();
        batch.insert(hash, value);
        for k in evicted {
            batch.remove(k);
        }
        self.tokens.apply_batch(batch).map_err(unfailing_write)
    }

    /// Deletes token hashes (expired ones, by the purge task).
    pub fn remove_tokens(&self, hashes: &[Vec<u8>]) -> Result<(), Error> {
        let mut batch = self.tokens.batch();
        for h in hashes {
            batch.remove(h.as_slice());
        }
        self.tokens.apply_batch(batch).map_err(unfailing_write)
    }

    /// Every user's persisted counters.
    pub fn usage_records(&self) -> Result<Vec<(String, UsageRecord)>, Error> {
        let mut out = Vec::new();
        for item in self.usage.iter() {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if let Ok(rec) = serde_json::from_slice::<UsageRecord>(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), rec));
            }
        }
        Ok(out)
    }

    /// Writes a batch of counters (every second, and at shutdown). Counters of users
    /// removed meanwhile are skipped so a removal is not undone.
    pub fn put_usage(&self, records: &[(String, UsageRecord)]) -> Result<(), Error> {
        let mut batch = self.usage.batch();
        for (name, rec) in records {
            if self
                .users
                .contains_key(name.as_bytes())
                .map_err(|e| self.read_err(e))?
            {
                let v = serde_json::to_vec(rec).map_err(encode("usage counters"))?;
                batch.insert(name.as_bytes(), v);
            }
        }
        self.usage.apply_batch(batch).map_err(unfailing_write)
    }
}

fn decode(v: &[u8]) -> Result<UserRecord, Error> {
    serde_json::from_slice(v).map_err(|e| Error::corrupt_json("user record", e))
}
