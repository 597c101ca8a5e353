//! Authentication as Plaspy does it: API keys (argon2id, never stored in plain text)
//! traded for opaque bearer tokens (256 random bits; only their SHA-256 is stored), plus
//! failed-login limiting per userName and per client address (`login_limiter.rs`).
//!
//! Users and live tokens are mirrored in memory so checking a bearer token costs one
//! SHA-256 and two hash-map lookups; the store stays the source of truth and every
//! change goes to both. Argon2 runs on a small pool of dedicated threads
//! (`hashing.rs`), so a burst of logins queues there instead of stalling the async
//! workers or growing memory.

pub(crate) mod hashing;
mod login_limiter;
pub(crate) mod usage;
pub(crate) mod user_manager;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::hashing::Verifier;
use crate::auth::login_limiter::{FailedLogins, LimitKey, NameKey};
use crate::config::AuthConfig;
use crate::error::{ApiError, TokenRefusal};
use crate::store::users::{TokenRecord, UserRecord};
use crate::store::Store;
use crate::sync::lock;
use crate::time::Clock;

/// What every API key starts with (a token starts with `fgt_`), so that a key sent
/// as a bearer token can be told apart and the client told what to do.
const KEY_PREFIX: &str = "fgk_";

/// A fresh API key: `fgk_` and 64 hex digits (256 bits).
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", random_hex())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// argon2id PHC string of an API key (default parameters: 19 MiB, 2 passes).
pub fn hash_key(key: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2 hash: {e}")))
}

#[cfg(test)]
fn verify_key(phc: &str, key: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(key.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// SHA-256 of a bearer token: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

// The userName rule lives with the other name rules, below the failed-login table
// that needs it too; kept reachable here for its callers.
pub use crate::names::valid_user_name as valid_name;

/// A live token in memory: the stored record and its monotonic deadline. A token is
/// refused when either its wall-clock `expires` or its deadline has passed, so a clock
/// stepped back (or a token issued while the clock was ahead) cannot stretch a 24-hour
/// token to years; a step forward still ends it early, which costs only a new login.
#[derive(Debug, Clone)]
struct LiveToken {
    rec: TokenRecord,
    deadline: Instant,
}

impl LiveToken {
    fn expired(&self, now: crate::time::Now) -> bool {
        self.rec.expires <= now.wall_ms || self.deadline <= now.mono
    }
}

/// The authentication state of a running server.
pub struct Auth {
    config: AuthConfig,
    users: RwLock<HashMap<String, Arc<UserRecord>>>,
    tokens: RwLock<HashMap<[u8; 32], LiveToken>>,
    /// Tokens revoked while this server runs (a rotated key, a removed user), until
    /// they would have expired: only so that a client presenting one is told "revoked"
    /// rather than "unknown". Only the operator revokes, and each entry goes at its
    /// deadline, so this holds at most the tokens revoked within one token lifetime.
    revoked: RwLock<HashMap<[u8; 32], Instant>>,
    failures: std::sync::Mutex<FailedLogins>,
    /// Argon2 verifications run here, `hash_concurrency` at a time.
    verifier: Verifier,
    /// Token lifetimes and failed-login windows run on it.
    clock: Clock,
}

/// Verified against when the user is unknown or disabled, so those answers take as long
/// as a wrong key. Same parameters as `Argon2::default()` (m=19456 KiB, t=2, p=1); the
/// key it hashes is public and matches no API key (those start with `fgk_`).
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$YChB3+H4xQp+i38yqiDVXQ$ltHof3VkrTTvupZCRsY502+A+IWNFjCUI+QKj8nyT6Y";

impl Auth {
    /// Loads users and live tokens from the store; `clock` is the time they run on.
    pub fn load(store: &Store, config: &AuthConfig, clock: Clock) -> Result<Auth, ApiError> {
        let users = store
            .users()?
            .into_iter()
            .map(|u| (u.name.clone(), Arc::new(u)))
            .collect::<HashMap<_, _>>();
        let crate::time::Now { wall_ms: now, mono } = clock.now();
        let ttl = Duration::from_secs(config.token_ttl_secs);
        let mut tokens = HashMap::new();
        let mut dead = Vec::new();
        for (k, rec) in store.tokens()? {
            let live = rec.expires > now
                && users
                    .get(&rec.user)
                    .is_some_and(|u| u.key_generation == rec.key_generation);
            match <[u8; 32]>::try_from(k.as_slice()) {
                Ok(h) if live => {
                    // Across a restart only the wall clock knows the age; what is
                    // left of the lifetime is capped at a whole lifetime.
                    let left = u64::try_from(rec.expires - now).unwrap_or(0);
                    let deadline = mono + Duration::from_millis(left).min(ttl);
                    tokens.insert(h, LiveToken { rec, deadline });
                }
                _ => dead.push(k),
            }
        }
        store.remove_tokens(&dead)?;
        Ok(Auth {
            config: config.clone(),
            users: RwLock::new(users),
            tokens: RwLock::new(tokens),
            revoked: RwLock::new(HashMap::new()),
            failures: std::sync::Mutex::new(FailedLogins::new(
                config.max_failed_logins,
                Duration::from_secs(config.failed_login_window_secs),
                config.failed_login_max_entries,
            )),
            verifier: Verifier::start(config.hash_concurrency)?,
            clock,
        })
    }

    /// Whether `name` is an existing user (the request log names the user of a login
    /// only then, so a mistyped secret in `userName` never reaches the log).
    pub fn is_user(&self, name: &str) -> bool {
        self.users.read().is_ok_and(|u| u.contains_key(name))
    }

    /// Number of users (metrics).
    pub fn user_count(&self) -> usize {
        self.users.read().map(|u| u.len()).unwrap_or(0)
    }

    /// Bearer tokens that would authenticate now, by expiry (metrics): revoked ones
    /// already left the table, expired ones stay until the hourly purge.
    pub fn live_tokens(&self) -> usize {
        let now = self.clock.now();
        self.tokens
            .read()
            .map(|t| t.values().filter(|live| !live.expired(now)).count())
            .unwrap_or(0)
    }

    /// Checks an `Authorization` header value; returns the caller, or why not.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<UserRecord>, ApiError> {
        use TokenRefusal::*;
        let refuse = |why| ApiError::Unauthorized(why);
        let header = header.ok_or(refuse(NoHeader))?;
        let header = std::str::from_utf8(header).map_err(|_| refuse(Malformed))?;
        let Some((scheme, token)) = header.trim().split_once(' ') else {
            // One word: the token (or a key) without its scheme, or a scheme alone.
            return Err(refuse(NotBearer));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refuse(NotBearer));
        }
        let token = token.trim();
        if token.starts_with(KEY_PREFIX) {
            return Err(refuse(ApiKey));
        }
        if token.is_empty() || token.len() > 256 {
            return Err(refuse(Malformed));
        }
        let hash = token_hash(token);
        let rec = {
            let tokens = self.tokens.read().map_err(|_| refuse(Unknown))?;
            let Some(live) = tokens.get(&hash) else {
                let revoked = self.revoked.read().is_ok_and(|r| r.contains_key(&hash));
                return Err(refuse(if revoked { Revoked } else { Unknown }));
            };
            if live.expired(self.clock.now()) {
                return Err(refuse(Expired));
            }
            live.rec.clone()
        };
        let users = self.users.read().map_err(|_| refuse(Unknown))?;
        let user = users.get(&rec.user).ok_or(refuse(Revoked))?;
        if user.disabled || user.key_generation != rec.key_generation {
            return Err(refuse(Revoked));
        }
        Ok(Arc::clone(user))
    }

    /// Refuses when a key has failed too often within the window.
    fn check_failures(&self, keys: &[LimitKey]) -> Result<(), ApiError> {
        lock(&self.failures)
            .check(keys, self.clock.mono())
            .map_err(|wait| ApiError::TooManyFailedLogins {
                retry_after: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            })
    }

    fn record_failure(&self, keys: &[LimitKey]) {
        lock(&self.failures).record(keys, self.clock.mono());
    }

    /// Drops failed-login entries whose window has passed (upkeep, every second).
    pub fn expire_failed_logins(&self) {
        lock(&self.failures).expire(self.clock.mono());
    }

    /// Entries in the failed-login table: (userNames, client addresses) (metrics).
    pub fn failed_login_entries(&self) -> (usize, usize) {
        lock(&self.failures).len()
    }

    /// Trades a userName and API key for a bearer token (`POST /api/Auth/Token`).
    pub async fn login(
        &self,
        store: &Store,
        user_name: &str,
        api_key: &str,
        peer: Option<IpAddr>,
    ) -> Result<(String, i64), ApiError> {
        let name = NameKey::new(user_name);
        let mut limit_keys = Vec::with_capacity(2);
        limit_keys.extend(name.map(LimitKey::Name));
        limit_keys.extend(peer.map(LimitKey::addr));
        self.check_failures(&limit_keys)?;
        if name.is_none() {
            // No user can have a name outside the userName rule (the CLI and restore
            // refuse one), so answering at once tells the client only what docs/api/http.md
            // already does: the answer is the same 401, without the argon2 run that
            // would make it as slow as a wrong key. The failure counts for the address.
            self.record_failure(&limit_keys);
            return Err(ApiError::InvalidCredentials);
        }
        let user = self
            .users
            .read()
            .ok()
            .and_then(|u| u.get(user_name).cloned());
        let usable = user
            .as_ref()
            .filter(|u| !u.disabled && api_key.len() <= 512);
        let phc = usable.map_or_else(|| DUMMY_PHC.to_string(), |u| u.key_hash.clone());
        let ok = self.verifier.verify(phc, api_key.to_string()).await?;
        let user = match (ok, usable) {
            (true, Some(u)) => Arc::clone(u),
            _ => {
                self.record_failure(&limit_keys);
                return Err(ApiError::InvalidCredentials);
            }
        };
        self.issue_token(store, &user)
    }

    fn issue_token(&self, store: &Store, user: &UserRecord) -> Result<(String, i64), ApiError> {
        let token = format!("fgt_{}", random_hex());
        let hash = token_hash(&token);
        let crate::time::Now { wall_ms: now, mono } = self.clock.now();
        let ttl = i64::try_from(self.config.token_ttl_secs).unwrap_or(i64::MAX / 2000) * 1000;
        let rec = TokenRecord {
            user: user.name.clone(),
            key_generation: user.key_generation,
            issued: now,
            expires: now.saturating_add(ttl),
        };
        let deadline = mono + Duration::from_secs(self.config.token_ttl_secs);
        let mut tokens = self
            .tokens
            .write()
            .map_err(|_| ApiError::Internal("token table poisoned".into()))?;
        // The oldest live tokens of this user beyond the bound are evicted; oldest by
        // deadline, which a clock step does not reorder as it would `issued`.
        let mut mine: Vec<([u8; 32], Instant)> = tokens
            .iter()
            .filter(|(_, t)| t.rec.user == user.name)
            .map(|(h, t)| (*h, t.deadline))
            .collect();
        mine.sort_by_key(|(_, deadline)| *deadline);
        let excess = (mine.len() + 1).saturating_sub(self.config.tokens_per_user);
        let evicted: Vec<[u8; 32]> = mine.iter().take(excess).map(|(h, _)| *h).collect();
        let evicted_keys: Vec<Vec<u8>> = evicted.iter().map(|h| h.to_vec()).collect();
        store.put_token(&hash, &rec, &evicted_keys)?;
        for h in &evicted {
            tokens.remove(h);
        }
        let expires = rec.expires;
        tokens.insert(hash, LiveToken { rec, deadline });
        Ok((token, expires))
    }

    /// Applies a user change made through the CLI or the admin socket: the very next
    /// request sees it. `None` means the user was removed.
    pub fn user_changed(&self, name: &str, user: Option<UserRecord>) {
        let revoke = match &user {
            None => true,
            Some(u) => {
                u.disabled
                    || self
                        .users
                        .read()
                        .ok()
                        .and_then(|m| {
                            m.get(name)
                                .map(|old| old.key_generation != u.key_generation)
                        })
                        .unwrap_or(false)
            }
        };
        if let Ok(mut users) = self.users.write() {
            match user {
                Some(u) => {
                    users.insert(name.to_string(), Arc::new(u));
                }
                None => {
                    users.remove(name);
                }
            }
        }
        if revoke {
            if let (Ok(mut tokens), Ok(mut revoked)) = (self.tokens.write(), self.revoked.write()) {
                tokens.retain(|hash, t| {
                    let keep = t.rec.user != name;
                    if !keep {
                        revoked.insert(*hash, t.deadline);
                    }
                    keep
                });
            }
        }
    }

    /// Drops expired tokens from memory and the store (periodic task).
    pub fn purge_expired(&self, store: &Store) -> Result<usize, ApiError> {
        let now = self.clock.now();
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.retain(|_, deadline| *deadline > now.mono);
        }
        let dead: Vec<[u8; 32]> = match self.tokens.read() {
            Ok(t) => t
                .iter()
                .filter(|(_, t)| t.expired(now))
                .map(|(h, _)| *h)
                .collect(),
            Err(_) => return Ok(0),
        };
        if dead.is_empty() {
            return Ok(0);
        }
        store.remove_tokens(&dead.iter().map(|h| h.to_vec()).collect::<Vec<_>>())?;
        if let Ok(mut t) = self.tokens.write() {
            for h in &dead {
                t.remove(h);
            }
        }
        Ok(dead.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(valid_name("admin"));
        assert!(valid_name("ci.bot_1@fleet-a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("ü"));
    }

    fn auth_with_user(
        config: AuthConfig,
        clock: Clock,
    ) -> (tempfile::TempDir, Store, Auth, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            &crate::store::StoreOptions {
                cache_bytes: 1 << 20,
                durability: crate::config::Durability::Relaxed,
                fail_flush_after: None,
                restoring: false,
                max_devices: 10_000,
                clock: crate::time::Clock::system(),
            },
        )
        .unwrap();
        let key = crate::auth::user_manager::UserManager::offline(&store, Clock::system())
            .add("bob", "default", crate::store::users::Role::Write, None)
            .unwrap()
            .key;
        let auth = Auth::load(&store, &config, clock).unwrap();
        (dir, store, auth, key)
    }

    fn bob_token(store: &Store, auth: &Auth) -> String {
        let user = auth.users.read().unwrap().get("bob").cloned().unwrap();
        auth.issue_token(store, &user).unwrap().0
    }

    #[test]
    fn a_token_dies_at_its_lifetime_whatever_the_wall_clock_says() {
        let clock = Clock::manual(1_796_000_000_000);
        let config = AuthConfig {
            token_ttl_secs: 60,
            ..AuthConfig::default()
        };
        let (_dir, store, auth, _) = auth_with_user(config, clock.clone());
        let header = |t: &str| format!("Bearer {t}");
        let token = bob_token(&store, &auth);
        clock.advance(Duration::from_secs(59));
        assert!(auth.authenticate(Some(header(&token).as_bytes())).is_ok());
        assert_eq!(auth.live_tokens(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            auth.authenticate(Some(header(&token).as_bytes()))
                .map(|_| ()),
            Err(ApiError::Unauthorized(TokenRefusal::Expired))
        );
        assert_eq!(auth.live_tokens(), 0);
        assert_eq!(auth.purge_expired(&store), Ok(1));
        // A wall clock set back a year does not stretch a token: the monotonic
        // deadline still ends it.
        let token = bob_token(&store, &auth);
        clock.step_wall(-365 * 86_400_000);
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            auth.authenticate(Some(header(&token).as_bytes()))
                .map(|_| ()),
            Err(ApiError::Unauthorized(TokenRefusal::Expired))
        );
    }

    #[test]
    fn a_lockout_ends_when_its_window_has_passed() {
        let clock = Clock::manual(1_796_000_000_000);
        let config = AuthConfig {
            max_failed_logins: 2,
            failed_login_window_secs: 30,
            ..AuthConfig::default()
        };
        let (_dir, _store, auth, _) = auth_with_user(config, clock.clone());
        let keys = [LimitKey::Name(NameKey::new("bob").unwrap())];
        auth.record_failure(&keys);
        auth.record_failure(&keys);
        assert_eq!(
            auth.check_failures(&keys),
            Err(ApiError::TooManyFailedLogins { retry_after: 30 })
        );
        clock.advance(Duration::from_secs(29));
        assert!(auth.check_failures(&keys).is_err());
        clock.advance(Duration::from_secs(1));
        assert_eq!(auth.check_failures(&keys), Ok(()));
        auth.expire_failed_logins();
        assert_eq!(auth.failed_login_entries(), (0, 0));
    }

    #[test]
    fn bearer_header_forms() {
        let (_dir, store, auth, _) = auth_with_user(AuthConfig::default(), Clock::system());
        let user = auth.users.read().unwrap().get("bob").cloned().unwrap();
        let (token, _) = auth.issue_token(&store, &user).unwrap();
        let ok = |h: String| {
            auth.authenticate(Some(h.as_bytes()))
                .map(|u| u.name.clone())
        };
        for h in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER {token}"),
            format!("Bearer   {token}  "),
        ] {
            assert_eq!(ok(h.clone()), Ok("bob".to_string()), "{h}");
        }
        use TokenRefusal::*;
        for (h, why) in [
            (String::new(), NotBearer),
            ("Bearer".to_string(), NotBearer),
            ("Bearer ".to_string(), NotBearer),
            (token.clone(), NotBearer),
            (format!("Basic {token}"), NotBearer),
            (format!("Bearer {}", generate_key()), ApiKey),
            (format!("Bearer {token}x"), Unknown),
            (format!("Bearer {}", "a".repeat(300)), Malformed),
        ] {
            assert_eq!(ok(h.clone()), Err(ApiError::Unauthorized(why)), "{h:?}");
        }
        assert_eq!(
            auth.authenticate(None).map(|_| ()),
            Err(ApiError::Unauthorized(NoHeader))
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer \xff\xfe")).map(|_| ()),
            Err(ApiError::Unauthorized(Malformed))
        );
    }

    #[test]
    fn keys_verify_only_themselves() {
        let key = generate_key();
        assert!(key.starts_with("fgk_") && key.len() == 68);
        let phc = hash_key(&key).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains(&key[4..]));
        assert!(verify_key(&phc, &key));
        assert!(!verify_key(&phc, "fgk_wrong"));
        assert!(!verify_key("not a phc", &key));
        // The dummy hash must cost what a real one costs.
        use argon2::password_hash::PasswordHash;
        let dummy = PasswordHash::new(DUMMY_PHC).unwrap();
        let real = PasswordHash::new(&phc).unwrap();
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.algorithm, real.algorithm);
        assert!(verify_key(DUMMY_PHC, "fleetgroups-dummy-key"));
    }
}
