//! Byte layout of every key in the store. Keys that belong to an account start with the
//! account name and a 0x00 byte, so one account's entries are one contiguous range:
//! listing an account, a device's groups or a change-feed page is a range scan whose
//! cost follows the page, not the store. Numbers are big-endian so byte order is numeric
//! order. Account names, user names and device IDs never contain 0x00 (validation
//! rejects control characters), so the separator is unambiguous.

/// `account 0x00`: the prefix of everything an account owns in a tree.
pub fn account_prefix(account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k
}

/// `account 0x00 n`: a group.
pub fn group(account: &str, n: u64) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// `account 0x00 lowercased-name`: the name index (value: group number).
pub fn name(account: &str, name_key: &str) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(name_key.as_bytes());
    k
}

/// `account 0x00 device 0x00`: the prefix of a device's reverse-index entries.
pub fn device_prefix(account: &str, device: &str) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

/// `account 0x00 device 0x00 n`: "device is in group n" (empty value).
pub fn device(account: &str, device: &str, n: u64) -> Vec<u8> {
    let mut k = device_prefix(account, device);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// `account 0x00 n piece`: one piece of a large group's device list (`pieces.rs`).
pub fn piece(account: &str, n: u64, piece: u32) -> Vec<u8> {
    let mut k = group(account, n);
    k.extend_from_slice(&piece.to_be_bytes());
    k
}

/// `groups 0x00` in `meta`: the prefix of every account's group count.
pub const GROUP_COUNTS: &[u8] = b"groups\0";

/// `groups 0x00 account` in `meta`: the number of groups of an account.
pub fn group_count(account: &str) -> Vec<u8> {
    let mut k = GROUP_COUNTS.to_vec();
    k.extend_from_slice(account.as_bytes());
    k
}

/// `idem 0x00 account 0x00 user 0x00` in `meta`: a user's idempotency record count
/// (`scope` is `idempotency_scope`).
pub fn idempotency_count(scope: &[u8]) -> Vec<u8> {
    let mut k = b"idem\0".to_vec();
    k.extend_from_slice(scope);
    k
}

/// The parts of a `piece` key: account, group number, piece number.
pub fn piece_parts(key: &[u8]) -> Option<(&[u8], u64, u32)> {
    let group_end = key.len().checked_sub(4)?;
    let account_end = group_end.checked_sub(9)?;
    if key[account_end] != 0 {
        return None;
    }
    let piece = u32::from_be_bytes(key[group_end..].try_into().ok()?);
    Some((&key[..account_end], trailing_u64(&key[..group_end])?, piece))
}

/// `account 0x00 seq`: a change-feed entry.
pub fn change(account: &str, seq: u64) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `account 0x00 n seq`: a change record under its group (`history.rs`).
pub fn record(account: &str, n: u64, seq: u64) -> Vec<u8> {
    record_in(&account_prefix(account), n, seq)
}

/// `record` for an account given by its prefix (`account 0x00`).
pub fn record_in(prefix: &[u8], n: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 16);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `account 0x00 user 0x00`: the scope of one user's idempotency records (and of their
/// order entries in the `idempotency_order` tree). The account is part of the scope so a
/// user removed and re-created under the same name in another account can never replay
/// an answer of the first account.
pub fn idempotency_scope(account: &str, user: &str) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// `account 0x00 user 0x00 idempotency-key`: a remembered create.
pub fn idempotency(account: &str, user: &str, key: &str) -> Vec<u8> {
    let mut k = idempotency_scope(account, user);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `account 0x00 user 0x00 seq`: the order entry of a remembered create (value: the
/// idempotency key), so the oldest record of a user is the first key of its range.
pub fn idempotency_order(account: &str, user: &str, seq: u64) -> Vec<u8> {
    let mut k = idempotency_scope(account, user);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix` (the end of a
/// prefix range), or None when no such key exists (a prefix of only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The trailing big-endian u64 of a key (group number or sequence), if there is one.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    let bytes: [u8; 8] = key[start..].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Reads a big-endian u64 value.
pub fn read_u64(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_is_byte_order() {
        assert!(group("a", 2) < group("a", 10));
        assert!(group("a", u64::MAX) < account_prefix("a\u{1}"));
        assert_eq!(trailing_u64(&group("acct", 77)), Some(77));
    }

    #[test]
    fn accounts_and_devices_do_not_overlap() {
        // "ab" must not fall inside the range of account "a".
        assert!(!group("ab", 1).starts_with(&account_prefix("a")));
        // Device "d1" entries are not inside the prefix of device "d".
        assert!(!device("a", "d1", 5).starts_with(&device_prefix("a", "d")));
        assert!(device("a", "d", 5).starts_with(&device_prefix("a", "d")));
        // A piece key reads back as its parts; a group key is not one.
        assert_eq!(
            piece_parts(&piece("acct", 7, 3)),
            Some((&b"acct"[..], 7, 3))
        );
        assert!(piece_parts(b"ab").is_none());
        // One user's idempotency scope does not contain another user's ("u" vs "u2").
        assert!(!idempotency("a", "u2", "k").starts_with(&idempotency_scope("a", "u")));
        assert!(idempotency_order("a", "u", 9).starts_with(&idempotency_scope("a", "u")));
    }

    #[test]
    fn prefix_end_bounds_the_range() {
        assert_eq!(prefix_end(b"a\0"), Some(b"a\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let end = prefix_end(&account_prefix("acct")).unwrap();
        assert!(change("acct", u64::MAX) < end);
        assert!(account_prefix("acct\u{1}") >= end);
    }
}
