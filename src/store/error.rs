//! What a store operation can fail with, in the store's own terms: a group that is not
//! there, a revision or name that does not fit, a quota, a cursor below the retained
//! feed, or the storage itself failing (with sled's or the OS's error as the `source`).
//! The store knows nothing of HTTP: `crate::error` turns each of these into a status
//! and an `errorCode` (its `From<store::Error> for ApiError`), the one place that does.

use std::error::Error as _;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The account has no group with this ID (another account's group is not there
    /// either: the same answer).
    #[error("no such group in the account")]
    GroupNotFound,
    /// A write named revisions (`If-Match`) the group is not at.
    #[error("the group is at another revision")]
    RevisionMismatch,
    /// Another group of the account has this name (as names compare, `names.rs`).
    #[error("another group of the account has this name")]
    NameTaken,
    /// A write through the API to an office group (defined centrally: only the office
    /// pull changes it).
    #[error("the group is an office group, read-only at a gateway")]
    OfficeReadOnly,
    /// The account already has `max` groups.
    #[error("the account already has the maximum of {max} groups")]
    QuotaReached { max: u64 },
    /// An idempotency key came back with a request of another fingerprint.
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    /// A change-feed cursor lies below what retention kept (`purged_through`).
    #[error("the cursor lies below the retained change feed")]
    CursorExpired,
    /// sled failed `during` a read or a write. A failed group or user write has also
    /// marked the store failed (`Store::fail`); a read, or a token or usage write
    /// (outside the overlay, `users.rs`), leaves it as it was.
    #[error("storage {during}")]
    Storage {
        during: &'static str,
        #[source]
        source: sled::Error,
    },
    /// A file the store keeps beside sled's (the high-water marks) could not be
    /// written `during` this step.
    #[error("{during}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The flush that should have made a change durable failed (the flusher has
    /// marked the store failed); `detail` is the flusher's.
    #[error("storage: {detail}")]
    Flush { detail: String },
    /// An earlier write or flush failed: writes are refused until restart.
    #[error("storage: an earlier write failed; refusing writes until restart")]
    Failed,
    /// A read met a value that writers kept replacing (a group in pieces, the change
    /// records of a group); the caller may try again.
    #[error("{what} kept changing while it was read; try again")]
    KeptChanging { what: String },
    /// Stored data that does not read as what it must be.
    #[error("corrupt {what}")]
    Corrupt {
        what: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A record could not be encoded (a bug: every record type serialises).
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Stored data that does not read as `what`, with no further cause.
    pub fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            source: None,
        }
    }

    /// Stored JSON that does not parse as `what`.
    pub fn corrupt_json(what: impl Into<String>, source: serde_json::Error) -> Error {
        Error::Corrupt {
            what: what.into(),
            source: Some(source),
        }
    }

    /// A sled read that failed.
    pub fn read(source: sled::Error) -> Error {
        Error::Storage {
            during: "read",
            source,
        }
    }

    /// The error and every cause under it, as one line: `{err}: {source}: …` (what
    /// the log shows an operator).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = self.source();
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn the_chain_names_every_cause() {
        let e = Error::Io {
            during: "reserving IDs",
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(e.chain(), "reserving IDs: disk full");
        assert_eq!(Error::GroupNotFound.chain(), "no such group in the account");
    }

    /// A sled failure is a 503 whose log detail names sled's error.
    #[test]
    fn a_sled_failure_is_unavailable_with_its_cause() {
        let api = crate::error::ApiError::from(Error::Storage {
            during: "write",
            source: sled::Error::Io(std::io::Error::other("no space left on device")),
        });
        assert_eq!(api.code(), "unavailable");
        assert_eq!(
            api.log_detail(),
            Some("storage write: IO error: no space left on device")
        );
    }
}
