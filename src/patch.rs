//! PATCH semantics for a group: RFC 6902 JSON Patch (via the `json-patch` crate) and
//! RFC 7396 JSON Merge Patch, both applied to the document
//! `{"name", "description", "devices"}` and then re-validated with the same rules as a
//! PUT body. Pure functions: the caller applies the result atomically in the store.
//!
//! Both are bounded while they apply ([`PatchLimits`]): a JSON Patch has at most
//! `limits.max_patch_operations` operations, and the document may never grow past
//! `limits.max_patch_document_bytes` — checked before each operation runs, from the
//! sizes of the values it adds or copies, so a patch that doubles the document with
//! every `copy` is refused when the next copy would pass the bound, not after it has
//! taken gigabytes. The caller applies a patch to a copy before it takes the store's
//! writer lock (`api/groups.rs`), so even a refused one costs other accounts nothing.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::error::ApiError;
use crate::model::{validate_doc, GroupDoc, Rules};

/// The top-level members a patch may address.
const FIELDS: [&str; 3] = ["name", "description", "devices"];

/// What one patch may cost: its operations, and the size of the document (as compact
/// JSON, estimated from above) at every step while it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLimits {
    /// `limits.max_patch_operations`.
    pub max_operations: usize,
    /// `limits.max_patch_document_bytes`.
    pub max_document_bytes: usize,
}

impl Default for PatchLimits {
    /// The configuration's defaults (`config.rs`).
    fn default() -> Self {
        PatchLimits {
            max_operations: 1000,
            max_document_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Parses a JSON Patch body: an array of operation objects. Anything that is not an
/// array is `invalid_input` (the body is wrong); a malformed operation, or more of them
/// than `limits.max_operations`, is `invalid_patch`. An object is most likely a merge
/// patch sent with the JSON Patch (or plain JSON) media type, so the message names the
/// media type that takes it.
pub fn parse_json_patch(
    body: &Value,
    limits: &PatchLimits,
) -> Result<Vec<PatchOperation>, ApiError> {
    let items = body.as_array().ok_or_else(|| {
        ApiError::InvalidInput(if body.is_object() {
            "the body must be a JSON Patch array of operations; an object is a merge patch: send it with Content-Type: application/merge-patch+json".into()
        } else {
            "the body must be a JSON Patch array of operations".into()
        })
    })?;
    if items.len() > limits.max_operations {
        return Err(too_many_operations(items.len(), limits));
    }
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let op_name = item.get("op").and_then(Value::as_str);
        match op_name {
            Some("add" | "remove" | "replace" | "move" | "copy" | "test") => {}
            Some(other) => {
                return Err(ApiError::InvalidPatch(format!(
                    "operation {i} has unknown op '{}'",
                    truncate(other)
                )))
            }
            None => {
                return Err(ApiError::InvalidPatch(format!(
                    "operation {i} must be an object with a string 'op'"
                )))
            }
        }
        let op: PatchOperation = serde_json::from_value(item.clone()).map_err(|e| {
            ApiError::InvalidPatch(format!("operation {i} is malformed: {}", clean(&e)))
        })?;
        check_inside_document(i, op.path().as_str(), "path")?;
        match &op {
            PatchOperation::Move(m) => check_inside_document(i, m.from.as_str(), "from")?,
            PatchOperation::Copy(c) => check_inside_document(i, c.from.as_str(), "from")?,
            _ => {}
        }
        ops.push(op);
    }
    Ok(ops)
}

/// Applies a JSON Patch to `current` and validates the result. All or nothing: the
/// operations run on a copy, one at a time, each only once the document it would
/// leave is known to stay within `limits.max_document_bytes`.
pub fn apply_json_patch(
    current: &GroupDoc,
    ops: &[PatchOperation],
    rules: Rules,
    limits: &PatchLimits,
) -> Result<GroupDoc, ApiError> {
    if ops.len() > limits.max_operations {
        return Err(too_many_operations(ops.len(), limits));
    }
    let mut doc = current.to_value();
    let mut size = json_size(&doc);
    for (i, op) in ops.iter().enumerate() {
        // An upper bound of the size after `op`: what it adds, less what it certainly
        // removes. Costs what applying it costs (a `copy` clones what it measures).
        let (grows, shrinks) = match op {
            PatchOperation::Add(a) => (json_size(&a.value), 0),
            PatchOperation::Replace(r) => (json_size(&r.value), size_at(&doc, r.path.as_str())),
            PatchOperation::Copy(c) => (size_at(&doc, c.from.as_str()), 0),
            PatchOperation::Remove(r) => (0, size_at(&doc, r.path.as_str())),
            PatchOperation::Move(_) | PatchOperation::Test(_) => (0, 0),
        };
        let after = size.saturating_add(grows);
        if after > limits.max_document_bytes {
            return Err(ApiError::InvalidPatch(format!(
                "operation {i} would make the group document larger than {} bytes (limits.max_patch_document_bytes)",
                limits.max_document_bytes
            )));
        }
        // `patch_unsafe` leaves a half-patched copy on error, which is dropped. The
        // crate's `patch` would undo the applied operations instead, and its undo
        // panics on some sequences ("cannot move the value inside itself" after a move
        // into a parent, found by Schemathesis); on a copy there is nothing to undo.
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op))
            .map_err(|e| patch_error(i, op, &e))?;
        size = after.saturating_sub(shrinks);
    }
    Ok(validate_doc(&doc, rules)?)
}

/// The answer for an operation that failed.
fn patch_error(i: usize, op: &PatchOperation, e: &json_patch::PatchError) -> ApiError {
    match e.kind {
        PatchErrorKind::TestFailed => ApiError::PatchTestFailed(e.path.to_string()),
        // A `test` of a location that does not exist (`/devices/7` in a shorter list)
        // did not hold either: the client asked "is this still so?" and the answer is
        // no, which is a 409, not a malformed request.
        _ if matches!(op, PatchOperation::Test(_)) => ApiError::PatchTestFailed(e.path.to_string()),
        ref kind => ApiError::InvalidPatch(format!(
            "operation {i} at '{}': {kind}",
            truncate(e.path.as_str())
        )),
    }
}

fn too_many_operations(n: usize, limits: &PatchLimits) -> ApiError {
    ApiError::InvalidPatch(format!(
        "a patch may have at most {} operations (limits.max_patch_operations); this one has {n}",
        limits.max_operations
    ))
}

/// The size of the value at `pointer` in `doc` (0 when there is none).
fn size_at(doc: &Value, pointer: &str) -> usize {
    doc.pointer(pointer).map_or(0, json_size)
}

/// The length of `v` as compact JSON, from above (a number counts as 24 bytes, an
/// escaped byte as 6): a walk, no serialising.
pub fn json_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => {
            let escaped = s
                .bytes()
                .filter(|b| matches!(b, b'"' | b'\\' | 0..=0x1f))
                .count();
            s.len() + 2 + escaped * 5
        }
        Value::Array(items) => items
            .iter()
            .fold(2, |n, item| n.saturating_add(json_size(item) + 1)),
        Value::Object(map) => map.iter().fold(2, |n, (k, item)| {
            n.saturating_add(k.len() + 4 + json_size(item))
        }),
    }
}

/// Applies a JSON Merge Patch (an object) to `current` and validates the result. A
/// merge patch only replaces members with values it carries, so the document it leaves
/// is at most the current one plus the patch: checked against
/// `limits.max_document_bytes` before it is applied.
pub fn apply_merge_patch(
    current: &GroupDoc,
    patch: &Value,
    rules: Rules,
    limits: &PatchLimits,
) -> Result<GroupDoc, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::InvalidInput(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut doc = current.to_value();
    if json_size(&doc).saturating_add(json_size(patch)) > limits.max_document_bytes {
        return Err(ApiError::InvalidInput(format!(
            "the patched group document would be larger than {} bytes (limits.max_patch_document_bytes)",
            limits.max_document_bytes
        )));
    }
    json_patch::merge(&mut doc, patch);
    Ok(validate_doc(&doc, rules)?)
}

/// A path must start inside one of the three members; the root and other members are
/// outside the group document.
fn check_inside_document(i: usize, pointer: &str, which: &str) -> Result<(), ApiError> {
    let first = pointer
        .strip_prefix('/')
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match first {
        Some(token) if FIELDS.contains(&token) => Ok(()),
        _ => Err(ApiError::InvalidPatch(format!(
            "operation {i} {which} '{}' is outside the group document (name, description, devices)",
            truncate(pointer)
        ))),
    }
}

/// Client text echoed in a message is cut short so errors stay small.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    }
}

/// serde's message without the "at line 1 column 40" position, which means nothing for
/// a value that was already parsed.
fn clean(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(pos) => s[..pos].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: Rules = Rules { max_devices: 10 };
    const LIMITS: PatchLimits = PatchLimits {
        max_operations: 50,
        max_document_bytes: 4096,
    };

    fn doc() -> GroupDoc {
        GroupDoc {
            name: "Trucks".into(),
            description: None,
            devices: vec!["a".into(), "b".into()],
        }
    }

    fn run(patch: Value) -> Result<GroupDoc, ApiError> {
        let ops = parse_json_patch(&patch, &LIMITS)?;
        apply_json_patch(&doc(), &ops, RULES, &LIMITS)
    }

    #[test]
    fn applies_every_op() {
        let out = run(json!([
            {"op": "add", "path": "/devices/-", "value": "c"},
            {"op": "replace", "path": "/name", "value": "Vans"},
            {"op": "remove", "path": "/devices/0"},
            {"op": "copy", "from": "/name", "path": "/description"},
            {"op": "move", "from": "/devices/1", "path": "/devices/0"},
            {"op": "test", "path": "/name", "value": "Vans"}
        ]))
        .unwrap();
        assert_eq!(out.name, "Vans");
        assert_eq!(out.description.as_deref(), Some("Vans"));
        assert_eq!(out.devices, vec!["c", "b"]);
    }

    #[test]
    fn result_is_revalidated() {
        let e = run(json!([{"op": "remove", "path": "/name"}])).unwrap_err();
        assert_eq!(e, ApiError::InvalidInput("name is required".into()));
        let out = run(json!([{"op": "add", "path": "/devices/-", "value": "a"}])).unwrap();
        assert_eq!(out.devices, vec!["a", "b"], "duplicates are dropped");
    }

    #[test]
    fn a_failure_after_a_move_into_a_parent_is_an_error_not_a_panic() {
        let e = run(json!([
            {"op": "move", "from": "/devices/0", "path": "/devices"},
            {"op": "remove", "path": "/description"},
            {"op": "remove", "path": "/devices/7"}
        ]))
        .unwrap_err();
        assert!(matches!(e, ApiError::InvalidPatch(_)), "{e:?}");
        // The same move alone is applied, and the result re-validated.
        let e = run(json!([{"op": "move", "from": "/devices/0", "path": "/devices"}])).unwrap_err();
        assert_eq!(
            e,
            ApiError::InvalidInput("devices must be an array of strings".into())
        );
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            run(json!({"op": "add"})),
            Err(ApiError::InvalidInput(_))
        ));
        assert!(
            matches!(run(json!([{"op": "frobnicate", "path": "/name"}])), Err(ApiError::InvalidPatch(m)) if m.contains("unknown op"))
        );
        assert!(matches!(
            run(json!([{"path": "/name"}])),
            Err(ApiError::InvalidPatch(_))
        ));
        assert!(matches!(
            run(json!([{"op": "add", "path": "/name"}])),
            Err(ApiError::InvalidPatch(_))
        ));
        assert!(
            matches!(run(json!([{"op": "add", "path": "/id", "value": 1}])), Err(ApiError::InvalidPatch(m)) if m.contains("outside"))
        );
        assert!(matches!(
            run(json!([{"op": "replace", "path": "", "value": {}}])),
            Err(ApiError::InvalidPatch(_))
        ));
        assert!(matches!(
            run(json!([{"op": "copy", "from": "/creation", "path": "/name"}])),
            Err(ApiError::InvalidPatch(_))
        ));
        assert!(matches!(
            run(json!([{"op": "remove", "path": "/devices/7"}])),
            Err(ApiError::InvalidPatch(_))
        ));
        assert_eq!(
            run(json!([{"op": "test", "path": "/name", "value": "Nope"}])).unwrap_err(),
            ApiError::PatchTestFailed("/name".into())
        );
        assert_eq!(
            run(json!([{"op": "test", "path": "/devices/7", "value": "a"}])).unwrap_err(),
            ApiError::PatchTestFailed("/devices/7".into())
        );
        assert_eq!(
            run(json!([{"op": "test", "path": "/description", "value": null}])),
            Ok(doc())
        );
    }

    #[test]
    fn merge_patch_sets_and_clears() {
        let out = apply_merge_patch(
            &doc(),
            &json!({"description": "d", "devices": ["z"]}),
            RULES,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            (out.description.as_deref(), out.devices.clone()),
            (Some("d"), vec!["z".to_string()])
        );
        let out = apply_merge_patch(&out, &json!({"description": null}), RULES, &LIMITS).unwrap();
        assert_eq!(out.description, None);
        assert!(matches!(
            apply_merge_patch(&doc(), &json!({"name": null}), RULES, &LIMITS),
            Err(ApiError::InvalidInput(_))
        ));
        assert!(matches!(
            apply_merge_patch(&doc(), &json!([1]), RULES, &LIMITS),
            Err(ApiError::InvalidInput(_))
        ));
    }

    /// Each `copy` of the device list into itself doubles the document: the patch is
    /// refused at the copy that would pass the bound, long before it balloons.
    #[test]
    fn a_doubling_patch_stops_at_the_document_bound() {
        let doubling: Vec<Value> = (0..24)
            .map(|_| json!({"op": "copy", "from": "/devices", "path": "/devices/-"}))
            .collect();
        match run(Value::Array(doubling)) {
            Err(ApiError::InvalidPatch(m)) => {
                assert!(m.contains("limits.max_patch_document_bytes"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // Growth by `add` counts too, and the bound is the document, not the patch.
        let big = "x".repeat(3000);
        let e = run(json!([
            {"op": "add", "path": "/description", "value": big},
            {"op": "copy", "from": "/description", "path": "/name"}
        ]))
        .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidPatch(ref m) if m.contains("operation 1")),
            "{e:?}"
        );
        // What a remove or replace frees is room again.
        let out = run(json!([
            {"op": "add", "path": "/description", "value": big},
            {"op": "replace", "path": "/description", "value": "short"},
            {"op": "copy", "from": "/name", "path": "/description"},
            {"op": "add", "path": "/devices/-", "value": "c"}
        ]))
        .unwrap();
        assert_eq!(out.description.as_deref(), Some("Trucks"));
    }

    #[test]
    fn operations_are_counted() {
        let ops: Vec<Value> = (0..51)
            .map(|_| json!({"op": "test", "path": "/name", "value": "Trucks"}))
            .collect();
        let e = parse_json_patch(&Value::Array(ops.clone()), &LIMITS).unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidPatch(ref m) if m.contains("at most 50")),
            "{e:?}"
        );
        assert!(run(Value::Array(ops[..50].to_vec())).is_ok());
    }

    #[test]
    fn a_merge_patch_is_bounded_alike() {
        let e = apply_merge_patch(
            &doc(),
            &json!({"description": "y".repeat(5000)}),
            RULES,
            &LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidInput(ref m) if m.contains("limits.max_patch_document_bytes")),
            "{e:?}"
        );
    }

    #[test]
    fn sizes_are_upper_bounds_of_compact_json() {
        for v in [
            json!({"name": "a\"b", "description": null, "devices": ["x", "yy"]}),
            json!([1, 2.5, -3, true, false, null, {}, []]),
            json!({"nested": {"a": [{"b": "é"}]}}),
        ] {
            assert!(
                json_size(&v) >= serde_json::to_vec(&v).unwrap().len(),
                "{v}"
            );
        }
    }
}
