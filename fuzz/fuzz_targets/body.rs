//! Fuzz target: a request body on its way to a handler. The first byte picks the path
//! (POST/PUT validation, JSON Patch, Merge Patch, membership list); the rest is the body
//! bytes, parsed as the server parses them. Whatever comes out must be a valid group:
//! validating it again gives it back unchanged. Any panic is a finding.
#![no_main]

use fleetgroups::model::{check_device_id, validate_doc, GroupDoc, Rules};
use fleetgroups::patch::{apply_json_patch, apply_merge_patch, parse_json_patch, PatchLimits};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const RULES: Rules = Rules { max_devices: 16 };
const LIMITS: PatchLimits = PatchLimits {
    max_operations: 1000,
    max_document_bytes: 1 << 20,
};

fn check(doc: &GroupDoc) {
    let again = validate_doc(&doc.to_value(), RULES).expect("a produced document validates");
    assert_eq!(&again, doc, "validation is idempotent");
    assert!(doc.devices.iter().all(|d| check_device_id(d).is_ok()));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let current = GroupDoc {
        name: "Trucks".into(),
        description: Some("line\nbreak".into()),
        devices: vec!["a".into(), "b".into(), "ü-1".into()],
    };
    match mode % 4 {
        0 => {
            if let Ok(doc) = validate_doc(&value, RULES) {
                check(&doc);
            }
        }
        1 => {
            if let Ok(ops) = parse_json_patch(&value, &LIMITS) {
                if let Ok(doc) = apply_json_patch(&current, &ops, RULES, &LIMITS) {
                    check(&doc);
                }
            }
        }
        2 => {
            if let Ok(doc) = apply_merge_patch(&current, &value, RULES, &LIMITS) {
                check(&doc);
            }
        }
        _ => {
            if let Some(items) = value.get("devices").and_then(Value::as_array) {
                for d in items.iter().filter_map(Value::as_str) {
                    let _ = check_device_id(d);
                }
            }
        }
    }
});
