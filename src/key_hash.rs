//! What a stored API-key hash may be: an argon2id PHC string that costs no more than
//! this binary's own keys. A leaf, because both sides ask: the store's checked import
//! of a backup (`user.keyHash`) and the login's verifier (`auth/hashing.rs`), at every
//! verification.

use argon2::{Algorithm, Params, PasswordHash, Version};

/// Why a stored key hash is refused; the message completes "keyHash …".
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyHashError {
    #[error("is not an argon2 PHC string ({0})")]
    NotPhc(String),
    #[error("names the algorithm {0}, not argon2id")]
    UnknownAlgorithm(String),
    #[error("has unusable argon2 parameters ({0})")]
    Params(String),
    #[error("has no salt or no hash")]
    Incomplete,
    #[error("uses {0}; this binary hashes keys with argon2id")]
    NotArgon2id(Algorithm),
    #[error("uses argon2 version {0}; this binary uses 19")]
    Version(u32),
    #[error("asks for m={m} KiB, t={t}, p={p}, more than this binary's own keys cost (m={max_m}, t={max_t}, p={max_p}): every login attempt for the name would pay it")]
    TooCostly {
        m: u32,
        t: u32,
        p: u32,
        max_m: u32,
        max_t: u32,
        max_p: u32,
    },
}

/// Checks that an argon2 PHC string (`user.keyHash` in a backup) parses and costs no
/// more than what this binary hashes keys with (`auth::hash_key`: argon2id, version
/// 0x13, argon2's default memory, passes and lanes). Anyone who tries a user's name
/// pays that cost on the server's side: a backup asking for 2 GiB and 10 passes made
/// one anonymous failed login take 12 s and 2 GB. Cheaper parameters are accepted
/// (older keys stay usable); the error says what was asked and what is allowed.
pub(crate) fn check_key_hash(phc: &str) -> Result<(), KeyHashError> {
    let hash = PasswordHash::new(phc).map_err(|e| KeyHashError::NotPhc(e.to_string()))?;
    let algorithm = Algorithm::try_from(hash.algorithm)
        .map_err(|_| KeyHashError::UnknownAlgorithm(hash.algorithm.to_string()))?;
    let params = Params::try_from(&hash).map_err(|e| KeyHashError::Params(e.to_string()))?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(KeyHashError::Incomplete);
    }
    within_bounds(algorithm, hash.version, &params)
}

/// The bounds of [`check_key_hash`], also applied at every verification: a store
/// restored by an older binary (which took any parameters) must not make a login
/// cost more than this binary's own keys do.
pub(crate) fn within_bounds(
    algorithm: Algorithm,
    version: Option<u32>,
    params: &Params,
) -> Result<(), KeyHashError> {
    if algorithm != Algorithm::Argon2id {
        return Err(KeyHashError::NotArgon2id(algorithm));
    }
    if let Some(v) = version.filter(|v| *v != u32::from(Version::V0x13)) {
        return Err(KeyHashError::Version(v));
    }
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    let (max_m, max_t, max_p) = (
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
    );
    if m > max_m || t > max_t || p > max_p {
        return Err(KeyHashError::TooCostly {
            m,
            t,
            p,
            max_m,
            max_t,
            max_p,
        });
    }
    Ok(())
}
