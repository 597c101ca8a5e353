//! The failed-login table behind the 429 `too_many_failed_logins` (docs/api/http.md "Authentication"): after
//! `auth.max_failed_logins` failures for one userName or one client address within
//! `auth.failed_login_window_secs`, logins for it are refused before argon2 runs.
//!
//! Nothing a client sends can make it large or slow (issue 11):
//! - Keys are typed and small: a userName is a key only when it follows the userName
//!   rule (1–64 of `A-Z a-z 0-9 . _ @ -`), lowercased and held inline in 65 bytes; an
//!   address is an `IpAddr`. A name outside the rule never becomes a key.
//! - A key keeps at most `max_failed_logins` failure times.
//! - userNames and client addresses each have at most `auth.failed_login_max_entries`
//!   entries. The two budgets are separate so that a flood of one kind can never push
//!   out the other: new addresses are cheap to make (IPv6 hands out 2^64 per host, and a
//!   failure with an invalid name costs no argon2), names are not (a name becomes a key
//!   only after an argon2 verification failed).
//! - An entry whose last failure left the window holds nothing: the upkeep task drops
//!   such entries every second (`expire`), not only when a new key needs room.
//! - Times are `Instant`s: a wall-clock step neither locks anyone out nor unlocks them.
//!
//! When a budget is full of live entries (decision, docs/design/decisions.md):
//! - addresses: the one whose last failure is oldest goes. Only an attacker who holds
//!   many addresses can fill the table, and such an attacker gains nothing from
//!   unlocking one of them;
//! - userNames: the one whose last failure is oldest *among those not locked* goes; a
//!   locked name is never evicted, so no flood unlocks a name being brute-forced. If
//!   every tracked name is locked, logins for untracked names are refused (429) until
//!   the first lock ends: the safe side, and out of reach with the defaults (10,000
//!   names × 10 failures within 60 s is 1,667 argon2 verifications a second; the
//!   default `hash_concurrency` of 1 does about 50).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The longest userName (docs/api/http.md "Authentication").
const NAME_MAX: usize = 64;

/// A userName as a limiter key: valid by the userName rule, ASCII-lowercased (so
/// `Admin` and `admin` share a count), stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl NameKey {
    /// The key of `name`, or None when no user can have that name.
    pub fn new(name: &str) -> Option<NameKey> {
        if !crate::names::valid_user_name(name) {
            return None;
        }
        let mut bytes = [0u8; NAME_MAX];
        for (to, from) in bytes.iter_mut().zip(name.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        Some(NameKey {
            len: u8::try_from(name.len()).ok()?,
            bytes,
        })
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What failures are counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKey {
    Name(NameKey),
    Addr(IpAddr),
}

impl LimitKey {
    /// The key for a client address. IPv4-mapped IPv6 addresses (a dual-stack
    /// listener) count as the IPv4 address they are.
    pub fn addr(ip: IpAddr) -> LimitKey {
        LimitKey::Addr(ip.to_canonical())
    }

    fn kind(&self) -> KeyKind {
        match self {
            LimitKey::Name(_) => KeyKind::Name,
            LimitKey::Addr(_) => KeyKind::Addr,
        }
    }
}

/// The two kinds of key, each with its own budget (index into `FailedLogins::order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Name = 0,
    Addr = 1,
}

impl KeyKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// The table.
pub struct FailedLogins {
    max_failures: usize,
    window: Duration,
    max_entries: usize,
    /// Failure times per key, oldest first, at most `max_failures`, never empty.
    entries: HashMap<LimitKey, VecDeque<Instant>>,
    /// Per kind: (last failure, key) of every entry, oldest first: the order of ageing
    /// out and of eviction.
    order: [BTreeSet<(Instant, LimitKey)>; 2],
    /// Set when every tracked name was locked and a new one needed room: until then,
    /// names without an entry are refused.
    names_full_until: Option<Instant>,
}

impl FailedLogins {
    /// An empty table: `max_failures` within `window` lock a key; at most
    /// `max_entries` names and as many addresses.
    pub fn new(max_failures: u32, window: Duration, max_entries: usize) -> FailedLogins {
        FailedLogins {
            max_failures: usize::try_from(max_failures).unwrap_or(usize::MAX).max(1),
            window,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            order: [BTreeSet::new(), BTreeSet::new()],
            names_full_until: None,
        }
    }

    /// Entries tracked: (userNames, addresses).
    pub fn len(&self) -> (usize, usize) {
        (
            self.order[KeyKind::Name.index()].len(),
            self.order[KeyKind::Addr.index()].len(),
        )
    }

    fn in_window(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.window
    }

    /// When the lock of a key with these failures ends, if it is locked at `now`. The
    /// deque holds at most `max_failures` times, so it is locked when all of them are
    /// in the window, until the oldest leaves it.
    fn lock_end(&self, failures: &VecDeque<Instant>, now: Instant) -> Option<Instant> {
        let oldest = *failures.front()?;
        (failures.len() >= self.max_failures && self.in_window(oldest, now))
            .then(|| oldest + self.window)
    }

    /// Whether a login for `keys` may go ahead at `now`; if not, how long until it may.
    pub fn check(&self, keys: &[LimitKey], now: Instant) -> Result<(), Duration> {
        let mut until: Option<Instant> = None;
        for key in keys {
            let end = match self.entries.get(key) {
                Some(failures) => self.lock_end(failures, now),
                None if key.kind() == KeyKind::Name => self.names_full_until.filter(|t| *t > now),
                None => None,
            };
            until = until.max(end);
        }
        match until {
            Some(t) if t > now => Err(t - now),
            _ => Ok(()),
        }
    }

    /// Records one failed login for every key.
    pub fn record(&mut self, keys: &[LimitKey], now: Instant) {
        for key in keys {
            let kind = key.kind();
            let slot = kind.index();
            let window = self.window;
            if let Some(failures) = self.entries.get_mut(key) {
                let last = failures.back().copied().unwrap_or(now);
                // Concurrent logins may record out of order; keep the deque sorted.
                let t = now.max(last);
                failures.push_back(t);
                while failures.len() > self.max_failures
                    || failures
                        .front()
                        .is_some_and(|f| now.saturating_duration_since(*f) >= window)
                {
                    failures.pop_front();
                }
                self.order[slot].remove(&(last, *key));
                self.order[slot].insert((t, *key));
                continue;
            }
            if !self.make_room(kind, now) {
                continue;
            }
            self.entries.insert(*key, VecDeque::from([now]));
            self.order[slot].insert((now, *key));
        }
    }

    /// Drops every entry whose last failure left the window; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        for kind in [KeyKind::Name, KeyKind::Addr] {
            let slot = kind.index();
            while let Some((last, key)) = self.order[slot].first().copied() {
                if self.in_window(last, now) {
                    break;
                }
                self.order[slot].pop_first();
                self.entries.remove(&key);
                dropped += 1;
            }
        }
        if self.names_full_until.is_some_and(|t| t <= now) {
            self.names_full_until = None;
        }
        dropped
    }

    /// Makes room for a new key of `kind`; false when it must not be tracked (every
    /// name is locked).
    fn make_room(&mut self, kind: KeyKind, now: Instant) -> bool {
        let slot = kind.index();
        if self.order[slot].len() < self.max_entries {
            return true;
        }
        self.expire(now);
        if self.order[slot].len() < self.max_entries {
            return true;
        }
        let victim = if kind == KeyKind::Addr {
            self.order[slot].first().copied()
        } else {
            // Linear in the locked names ahead of the first unlocked one; each of them
            // cost `max_failures` argon2 verifications, so this stays cheap next to
            // the verification that brought us here.
            self.order[slot]
                .iter()
                .find(|(_, k)| {
                    self.entries
                        .get(k)
                        .map_or(true, |f| self.lock_end(f, now).is_none())
                })
                .copied()
        };
        match victim {
            Some(v) => {
                self.order[slot].remove(&v);
                self.entries.remove(&v.1);
                true
            }
            None => {
                self.names_full_until = self.order[slot]
                    .iter()
                    .filter_map(|(_, k)| self.entries.get(k))
                    .filter_map(|f| self.lock_end(f, now))
                    .min();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn name(n: &str) -> LimitKey {
        LimitKey::Name(NameKey::new(n).unwrap())
    }

    fn addr(n: u32) -> LimitKey {
        LimitKey::addr(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn only_names_that_follow_the_rule_become_keys() {
        assert!(NameKey::new("ci.bot_1@fleet-a").is_some());
        assert_eq!(NameKey::new("Admin"), NameKey::new("admin"));
        assert_eq!(format!("{:?}", NameKey::new("Admin").unwrap()), "\"admin\"");
        for bad in [
            String::new(),
            "a b".into(),
            "ü".into(),
            "a".repeat(65),
            "a".repeat(900 * 1024),
        ] {
            assert_eq!(NameKey::new(&bad), None, "{:.20}", bad);
        }
        assert!(NameKey::new(&"a".repeat(64)).is_some());
        // An IPv4-mapped address is the IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(LimitKey::addr(mapped), addr(1));
    }

    #[test]
    fn failures_lock_within_the_window_only() {
        let mut t = FailedLogins::new(2, MIN, 100);
        let keys = [name("bob"), addr(1)];
        let t0 = Instant::now();
        assert_eq!(t.check(&keys, t0), Ok(()));
        t.record(&keys, t0);
        t.record(&keys[..1], t0 + secs(10));
        // Two failures of bob within 60 s: locked until the first is 60 s old.
        assert_eq!(t.check(&keys, t0 + secs(20)), Err(secs(40)));
        // The address alone has one failure: not locked.
        assert_eq!(t.check(&keys[1..], t0 + secs(20)), Ok(()));
        // Once the first failure leaves the window, one remains: allowed again.
        assert_eq!(t.check(&keys, t0 + MIN), Ok(()));
        // A third failure: the two newest count, locked until the second is 60 s old.
        t.record(&keys[..1], t0 + MIN);
        assert_eq!(t.check(&keys, t0 + MIN), Err(secs(10)));
        assert_eq!(t.len(), (1, 1));
    }

    #[test]
    fn entries_age_out_on_the_timer_without_new_failures() {
        let mut t = FailedLogins::new(3, MIN, 100);
        let t0 = Instant::now();
        for i in 0..10 {
            t.record(&[name(&format!("u{i}")), addr(i)], t0 + secs(u64::from(i)));
        }
        assert_eq!(t.len(), (10, 10));
        assert_eq!(t.expire(t0 + secs(59)), 0);
        // u0 and u1 (and their addresses) failed last 60 and 59 s before.
        assert_eq!(t.expire(t0 + secs(61)), 4);
        assert_eq!(t.len(), (8, 8));
        assert_eq!(t.expire(t0 + secs(70)), 16);
        assert_eq!(t.len(), (0, 0));
        assert!(t.entries.is_empty());
    }

    /// Full of addresses: the oldest goes. A flood of new addresses never touches the
    /// names: a locked name stays locked.
    #[test]
    fn an_address_flood_evicts_addresses_only() {
        let mut t = FailedLogins::new(3, MIN, 50);
        let t0 = Instant::now();
        let admin = name("admin");
        for _ in 0..3 {
            t.record(&[admin, addr(0)], t0);
        }
        assert!(t.check(&[admin], t0).is_err());
        for i in 1..=10_000 {
            t.record(&[addr(i)], t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(t.len(), (1, 50));
        assert_eq!(
            t.check(&[admin, addr(20_000)], t0 + secs(30)),
            Err(secs(30))
        );
        // The newest 50 addresses are the ones kept.
        assert!(t.entries.contains_key(&addr(10_000)));
        assert!(t.entries.contains_key(&addr(9_951)));
        assert!(!t.entries.contains_key(&addr(9_950)));
        assert!(!t.entries.contains_key(&addr(0)));
    }

    /// Full of names: the oldest name that is not locked goes, never a locked one.
    #[test]
    fn a_name_flood_never_evicts_a_locked_name() {
        let mut t = FailedLogins::new(3, MIN, 10);
        let t0 = Instant::now();
        let admin = name("admin");
        for _ in 0..3 {
            t.record(&[admin], t0);
        }
        for i in 0..100 {
            t.record(&[name(&format!("n{i}"))], t0 + Duration::from_millis(i + 1));
        }
        assert_eq!(t.len(), (10, 0));
        assert_eq!(t.check(&[admin], t0 + secs(1)), Err(secs(59)));
        // admin and the nine newest names.
        assert!(t.entries.contains_key(&name("n99")));
        assert!(t.entries.contains_key(&name("n91")));
        assert!(!t.entries.contains_key(&name("n90")));
    }

    /// Every name tracked is locked: a new name cannot get an entry, so it is refused
    /// until the first lock ends rather than let through untracked.
    #[test]
    fn when_every_name_is_locked_new_names_wait() {
        let mut t = FailedLogins::new(2, MIN, 3);
        let t0 = Instant::now();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            let at = t0 + secs(i as u64);
            t.record(&[name(n)], at);
            t.record(&[name(n)], at);
        }
        let fresh = name("fresh");
        assert_eq!(t.check(&[fresh], t0 + secs(5)), Ok(()));
        // Its failure finds no room: not tracked, and names are closed until a's
        // lock ends at t0 + 60 s.
        t.record(&[fresh, addr(1)], t0 + secs(5));
        assert_eq!(t.len(), (3, 1));
        assert_eq!(t.check(&[fresh], t0 + secs(5)), Err(secs(55)));
        assert_eq!(t.check(&[name("other")], t0 + secs(30)), Err(secs(30)));
        // Tracked names are judged by their own entries; addresses are unaffected.
        assert_eq!(t.check(&[addr(2)], t0 + secs(30)), Ok(()));
        // When a's lock ends its entry ages out and names are open again.
        assert_eq!(t.check(&[fresh], t0 + MIN), Ok(()));
        assert_eq!(t.expire(t0 + MIN), 1);
        t.record(&[fresh], t0 + MIN);
        assert!(t.entries.contains_key(&fresh));
    }

    /// A key keeps at most `max_failures` times, whatever the number of failures.
    #[test]
    fn a_key_keeps_at_most_max_failures_times() {
        let mut t = FailedLogins::new(4, MIN, 10);
        let t0 = Instant::now();
        for i in 0..1000 {
            t.record(&[addr(1)], t0 + Duration::from_millis(i));
        }
        assert_eq!(t.entries[&addr(1)].len(), 4);
        assert_eq!(t.order[KeyKind::Addr.index()].len(), 1);
        // Out-of-order records keep the deque sorted.
        t.record(&[addr(1)], t0);
        let f = &t.entries[&addr(1)];
        assert!(f.iter().zip(f.iter().skip(1)).all(|(a, b)| a <= b));
    }
}
