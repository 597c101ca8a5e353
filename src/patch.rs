//! PATCH semantics for a group: RFC 6902 JSON Patch (via the `json-patch` crate) and
//! RFC 7396 JSON Merge Patch, both applied to the document
//! `{"name", "description", "devices"}` and then re-validated with the same rules as a
//! PUT body. Pure functions: the caller applies the result atomically in the store.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::error::ApiError;
use crate::model::{validate_doc, GroupDoc, Rules};

/// The top-level members a patch may address.
const FIELDS: [&str; 3] = ["name", "description", "devices"];

/// Parses a JSON Patch body: an array of operation objects. Anything that is not an
/// array is `invalid_input` (the body is wrong); a malformed operation is
/// `invalid_patch`. An object is most likely a merge patch sent with the JSON Patch
/// (or plain JSON) media type, so the message names the media type that takes it.
pub fn parse_json_patch(body: &Value) -> Result<Vec<PatchOperation>, ApiError> {
    let items = body.as_array().ok_or_else(|| {
        ApiError::InvalidInput(if body.is_object() {
            "the body must be a JSON Patch array of operations; an object is a merge patch: send it with Content-Type: application/merge-patch+json".into()
        } else {
            "the body must be a JSON Patch array of operations".into()
        })
    })?;
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
/// operations run on a copy.
pub fn apply_json_patch(
    current: &GroupDoc,
    ops: &[PatchOperation],
    rules: Rules,
) -> Result<GroupDoc, ApiError> {
    let mut doc = current.to_value();
    // `patch_unsafe` leaves a half-patched copy on error, which is dropped. The crate's
    // `patch` would undo the applied operations instead, and its undo panics on some
    // sequences ("cannot move the value inside itself" after a move into a parent,
    // found by Schemathesis); on a copy there is nothing to undo.
    json_patch::patch_unsafe(&mut doc, ops).map_err(|e| match e.kind {
        PatchErrorKind::TestFailed => ApiError::PatchTestFailed(e.path.to_string()),
        // A `test` of a location that does not exist (`/devices/7` in a shorter list)
        // did not hold either: the client asked "is this still so?" and the answer is
        // no, which is a 409, not a malformed request.
        _ if matches!(ops.get(e.operation), Some(PatchOperation::Test(_))) => {
            ApiError::PatchTestFailed(e.path.to_string())
        }
        ref kind => ApiError::InvalidPatch(format!(
            "operation {} at '{}': {kind}",
            e.operation,
            truncate(e.path.as_str())
        )),
    })?;
    Ok(validate_doc(&doc, rules)?)
}

/// Applies a JSON Merge Patch (an object) to `current` and validates the result.
pub fn apply_merge_patch(
    current: &GroupDoc,
    patch: &Value,
    rules: Rules,
) -> Result<GroupDoc, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::InvalidInput(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut doc = current.to_value();
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

    fn doc() -> GroupDoc {
        GroupDoc {
            name: "Trucks".into(),
            description: None,
            devices: vec!["a".into(), "b".into()],
        }
    }

    fn run(patch: Value) -> Result<GroupDoc, ApiError> {
        let ops = parse_json_patch(&patch)?;
        apply_json_patch(&doc(), &ops, RULES)
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
        )
        .unwrap();
        assert_eq!(
            (out.description.as_deref(), out.devices.clone()),
            (Some("d"), vec!["z".to_string()])
        );
        let out = apply_merge_patch(&out, &json!({"description": null}), RULES).unwrap();
        assert_eq!(out.description, None);
        assert!(matches!(
            apply_merge_patch(&doc(), &json!({"name": null}), RULES),
            Err(ApiError::InvalidInput(_))
        ));
        assert!(matches!(
            apply_merge_patch(&doc(), &json!([1]), RULES),
            Err(ApiError::InvalidInput(_))
        ));
    }
}
