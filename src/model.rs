//! The group resource (docs/api/http.md "The group"): typed IDs, the validated document a client may set
//! (`name`, `description`, `devices`), and the rules every create, replace, patch and
//! membership change must pass. Pure logic, no I/O: the same checks run for POST, PUT,
//! JSON Patch and Merge Patch results, so there is exactly one definition of "valid".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A document that breaks the §4 rules: the sentence that says which rule. The model
/// knows nothing of HTTP; `error.rs` turns it into 400 `invalid_input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Longest group name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Longest device ID, in characters.
pub const MAX_DEVICE_CHARS: usize = 64;

/// A group's number: `grp-<n>` on the wire, `n` inside, for a group made at this
/// gateway; `ofc-<m>` on the wire and `OFFICE_BASE + m` inside for an office group
/// (defined centrally, the same `ofc-<m>` on every gateway). Local numbers come from
/// the store's sequence and never reach `OFFICE_BASE` (2^63), so the two can never
/// collide, and every key, index and feed record keeps its `u64` number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// Where office group numbers start inside (see `GroupId`).
pub const OFFICE_BASE: u64 = 1 << 63;

/// The largest `m` of an `ofc-<m>` ID.
pub const OFFICE_MAX: u64 = u64::MAX - OFFICE_BASE;

impl GroupId {
    /// Parses the canonical `grp-<n>` or `ofc-<m>` form: a positive decimal, no sign,
    /// no leading zero, in range (`n` below `OFFICE_BASE`, `m` at most `OFFICE_MAX`).
    /// Anything else is not the ID of any group (and so answers 404, not 400).
    pub fn parse(s: &str) -> Option<GroupId> {
        if let Some(d) = canonical_digits(s, "ofc-") {
            return GroupId::office(d.parse().ok()?);
        }
        let n: u64 = canonical_digits(s, "grp-")?.parse().ok()?;
        (n < OFFICE_BASE).then_some(GroupId(n))
    }

    /// The office group `ofc-<m>` (None when `m` is out of range).
    pub fn office(m: u64) -> Option<GroupId> {
        (1..=OFFICE_MAX)
            .contains(&m)
            .then(|| GroupId(OFFICE_BASE + m))
    }

    /// Whether this is an office group (defined centrally, read-only here).
    pub fn is_office(self) -> bool {
        self.0 > OFFICE_BASE
    }

    /// `"office"` or `"local"`: the group's `origin` on the wire.
    pub fn origin(self) -> &'static str {
        if self.is_office() {
            "office"
        } else {
            "local"
        }
    }

    /// A list cursor (`after`): any canonical `grp-<n>` or `ofc-<m>` of up to 20
    /// digits, also one beyond the largest possible ID, so the documented pattern is
    /// exact. Lists run in number order: every local group, then every office group;
    /// so a `grp-` cursor past the last possible local number reads as the last one
    /// (office groups follow it) and an `ofc-` one past the last as `u64::MAX`
    /// (nothing follows).
    pub fn parse_cursor(s: &str) -> Option<u64> {
        if let Some(d) = canonical_digits(s, "ofc-") {
            return Some(
                d.parse::<u64>()
                    .map_or(u64::MAX, |m| OFFICE_BASE.saturating_add(m.min(OFFICE_MAX))),
            );
        }
        canonical_digits(s, "grp-").map(|d| {
            d.parse::<u64>()
                .map_or(OFFICE_BASE - 1, |n| n.min(OFFICE_BASE - 1))
        })
    }
}

/// The digits of `<prefix><n>` in canonical form (1–20 digits, no leading zero).
fn canonical_digits<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.strip_prefix(prefix).filter(|d| {
        (1..=20).contains(&d.len()) && !d.starts_with('0') && d.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Whether `key` is a usable `Idempotency-Key` (docs/api/extensions.md "Retry-safe create"): 1 to 255 visible ASCII
/// characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_office() {
            write!(f, "ofc-{}", self.0 - OFFICE_BASE)
        } else {
            write!(f, "grp-{}", self.0)
        }
    }
}

/// The part of a group a client controls, already validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDoc {
    pub name: String,
    pub description: Option<String>,
    pub devices: Vec<String>,
}

impl GroupDoc {
    /// The document JSON Patch and Merge Patch operate on.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "devices": self.devices,
        })
    }
}

/// Limits that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_devices: usize,
}

/// Validates a POST/PUT body (or a patched document): an object with `name`,
/// optional `description` and `devices`; unknown fields are ignored.
pub fn validate_doc(body: &Value, rules: Rules) -> Result<GroupDoc, Invalid> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object"))?;
    Ok(GroupDoc {
        name: validate_name(obj)?,
        description: validate_description(obj)?,
        devices: validate_devices(obj.get("devices"), rules)?,
    })
}

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid(what.into())
}

fn validate_name(obj: &Map<String, Value>) -> Result<String, Invalid> {
    let raw = match obj.get("name") {
        None | Some(Value::Null) => return Err(invalid("name is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("name must be a string")),
    };
    let name = crate::names::normalize(raw.trim());
    let len = name.chars().count();
    if len == 0 {
        return Err(invalid("name must not be empty"));
    }
    if len > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name must not contain control characters"));
    }
    crate::names::check(&name).map_err(invalid)?;
    Ok(name)
}

fn validate_description(obj: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match obj.get("description") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(invalid(format!(
                    "description must be at most {MAX_DESCRIPTION_CHARS} characters"
                )));
            }
            // Line breaks and tabs are text in a description; other control
            // characters (NUL, escape sequences) are not.
            if s.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            {
                return Err(invalid(
                    "description must not contain control characters other than tab and line breaks",
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(invalid("description must be a string or null")),
    }
}

fn validate_devices(value: Option<&Value>, rules: Rules) -> Result<Vec<String>, Invalid> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => distinct_devices(items, Some(rules.max_devices)),
        Some(_) => Err(invalid("devices must be an array of strings")),
    }
}

/// The device IDs of a `devices` array, each checked (§4), duplicates dropped, in the
/// order first given; more than `max` distinct ones (when given) is refused. The one
/// reading of a device list, for group bodies and for the membership call.
pub fn distinct_devices(items: &[Value], max: Option<usize>) -> Result<Vec<String>, Invalid> {
    let cap = max.map_or(items.len(), |m| items.len().min(m));
    let mut out: Vec<String> = Vec::with_capacity(cap);
    let mut seen = std::collections::HashSet::with_capacity(cap);
    for (i, item) in items.iter().enumerate() {
        let id = item
            .as_str()
            .ok_or_else(|| invalid(format!("devices[{i}] must be a string")))?;
        check_device_id(id).map_err(|why| invalid(format!("devices[{i}] {why}")))?;
        if seen.insert(id) {
            out.push(id.to_string());
            if let Some(max) = max.filter(|m| out.len() > *m) {
                return Err(invalid(format!(
                    "devices must hold at most {max} distinct IDs"
                )));
            }
        }
    }
    Ok(out)
}

/// Checks one device ID (§4); the error completes a sentence that starts with the
/// field's name.
pub fn check_device_id(id: &str) -> Result<(), &'static str> {
    let len = id.chars().count();
    if len == 0 {
        return Err("must not be empty");
    }
    if len > MAX_DEVICE_CHARS {
        return Err("must be at most 64 characters");
    }
    if id.starts_with(char::is_whitespace) || id.ends_with(char::is_whitespace) {
        return Err("must not start or end with white space");
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

/// The form of a name used for uniqueness within an account and the `name` filter:
/// NFC, then full Unicode case folding (`names.rs`).
pub fn name_key(name: &str) -> String {
    crate::names::fold(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: Rules = Rules { max_devices: 3 };

    fn err(body: Value) -> String {
        match validate_doc(&body, RULES) {
            Err(Invalid(m)) => m,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn parses_only_canonical_ids() {
        assert_eq!(GroupId::parse("grp-1"), Some(GroupId(1)));
        // Local numbers stay below 2^63; office IDs take the numbers above it.
        assert_eq!(
            GroupId::parse("grp-9223372036854775807"),
            Some(GroupId(OFFICE_BASE - 1))
        );
        assert_eq!(GroupId::parse("ofc-1"), Some(GroupId(OFFICE_BASE + 1)));
        assert_eq!(
            GroupId::parse("ofc-9223372036854775807"),
            Some(GroupId(u64::MAX))
        );
        assert_eq!(GroupId(OFFICE_BASE + 5).to_string(), "ofc-5");
        assert!(GroupId(OFFICE_BASE + 5).is_office() && !GroupId(5).is_office());
        for bad in [
            "grp-18446744073709551615",
            "grp-9223372036854775808",
            "ofc-0",
            "ofc-01",
            "ofc-9223372036854775808",
            "OFC-1",
            "grp-0",
            "grp-01",
            "grp-",
            "grp--1",
            "grp-+1",
            "GRP-1",
            "grp-1x",
            "grp-18446744073709551616",
            "1",
        ] {
            assert_eq!(GroupId::parse(bad), None, "{bad}");
        }
        assert_eq!(GroupId(42).to_string(), "grp-42");
    }

    #[test]
    fn plaspy_example_is_valid() {
        let doc = validate_doc(
            &json!({"name": "New Group", "description": "Description of the new group", "devices": ["dev-456", "dev-789"]}),
            RULES,
        )
        .unwrap();
        assert_eq!(doc.name, "New Group");
        assert_eq!(
            doc.description.as_deref(),
            Some("Description of the new group")
        );
        assert_eq!(doc.devices, vec!["dev-456", "dev-789"]);
    }

    #[test]
    fn normalises_name_and_devices() {
        let doc = validate_doc(
            &json!({"name": "  Trucks \t", "devices": ["a", "b", "a", "c", "b"], "id": "grp-9", "success": true}),
            RULES,
        )
        .unwrap();
        assert_eq!(doc.name, "Trucks");
        assert_eq!(doc.description, None);
        assert_eq!(doc.devices, vec!["a", "b", "c"]);
        let doc = validate_doc(
            &json!({"name": "x", "devices": null, "description": null}),
            RULES,
        )
        .unwrap();
        assert!(doc.devices.is_empty());
    }

    #[test]
    fn names_each_broken_rule() {
        assert_eq!(err(json!([])), "the body must be a JSON object");
        assert_eq!(err(json!({})), "name is required");
        assert_eq!(err(json!({"name": 5})), "name must be a string");
        assert_eq!(err(json!({"name": "   "})), "name must not be empty");
        assert_eq!(
            err(json!({"name": "a".repeat(129)})),
            "name must be at most 128 characters"
        );
        assert!(validate_doc(&json!({"name": "é".repeat(128)}), RULES).is_ok());
        assert_eq!(
            err(json!({"name": "a\u{0}b"})),
            "name must not contain control characters"
        );
        assert_eq!(
            err(json!({"name": "a", "description": 1})),
            "description must be a string or null"
        );
        assert!(err(json!({"name": "a", "description": "x".repeat(1025)}))
            .starts_with("description must be at most"));
        assert!(validate_doc(&json!({"name": "a", "description": "line\nbreak"}), RULES).is_ok());
        assert_eq!(
            err(json!({"name": "a", "devices": "d"})),
            "devices must be an array of strings"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": [1]})),
            "devices[0] must be a string"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": ["ok", ""]})),
            "devices[1] must not be empty"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": [" d"]})),
            "devices[0] must not start or end with white space"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": ["d\u{7}"]})),
            "devices[0] must not contain control characters"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": ["x".repeat(65)]})),
            "devices[0] must be at most 64 characters"
        );
        assert_eq!(
            err(json!({"name": "a", "devices": ["1", "2", "3", "4"]})),
            "devices must hold at most 3 distinct IDs"
        );
        // Duplicates do not count against the limit.
        assert!(validate_doc(
            &json!({"name": "a", "devices": ["1", "2", "3", "3", "1"]}),
            RULES
        )
        .is_ok());
    }

    #[test]
    fn name_key_is_case_insensitive() {
        assert_eq!(name_key("Trucks ÄÖ"), name_key("TRUCKS äö"));
    }
}
