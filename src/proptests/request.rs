//! Property tests (proptest) of the pure request-path logic: validation (`model.rs`),
//! JSON Patch and Merge Patch (`patch.rs`), and the router's percent-decoding and query
//! parsing (`http/router.rs`). They state what must hold for *any* input — never a
//! panic, a valid input stays valid after normalising, a patch yields a whole valid
//! document or an error, encode/decode round trips — where the unit tests beside each
//! module check chosen examples. Test-only; compiled under `cfg(test)`.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::http::router::{parse_query, percent_decode, route, Op};

/// Query parameter names the property tests parse for.
const KNOWN: [&str; 4] = ["limit", "after", "device", "name"];
use crate::model::{check_device_id, validate_doc, GroupDoc, GroupId, Rules, MAX_NAME_CHARS};
use crate::patch::{apply_json_patch, apply_merge_patch, parse_json_patch, PatchLimits};

const RULES: Rules = Rules { max_devices: 8 };
const LIMITS: PatchLimits = PatchLimits {
    max_operations: 1000,
    max_document_bytes: 1 << 20,
};

/// Characters that stress the rules: white space, controls (NUL, ESC, DEL, C1), case
/// pairs, multi-byte and path/percent syntax.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'e'),
        1 => prop::sample::select(vec![
            ' ', '\t', '\n', '\r', '\u{0}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{2028}',
            'A', 'É', 'é', 'ß', 'İ', '日', '🚚', '/', '%', '+', '~', '"', '\\', '-', '.',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Any JSON value, biased towards the shapes and keys of a group document.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        tricky_string(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["name", "description", "devices", "id", "op", "path", "value", "from"])
            .prop_map(str::to_string),
        1 => tricky_string(6),
    ]
}

/// A body shaped like a group: the three fields, each well- or ill-typed.
fn group_body() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        4 => tricky_string(20).prop_map(Value::String),
        1 => "[a-z]{120,140}".prop_map(Value::String),
        1 => json_value(),
    ];
    let description = prop_oneof![
        2 => Just(Value::Null),
        3 => tricky_string(30).prop_map(Value::String),
        1 => json_value(),
    ];
    let devices = prop_oneof![
        1 => Just(Value::Null),
        4 => prop::collection::vec(tricky_string(5).prop_map(Value::String), 0..12).prop_map(Value::Array),
        1 => json_value(),
    ];
    (name, description, devices, any::<u8>()).prop_map(|(n, d, v, mask)| {
        let mut m = Map::new();
        if mask & 1 == 0 {
            m.insert("name".into(), n);
        }
        if mask & 2 == 0 {
            m.insert("description".into(), d);
        }
        if mask & 4 == 0 {
            m.insert("devices".into(), v);
        }
        if mask & 8 == 0 {
            m.insert("id".into(), json!("grp-1"));
        }
        Value::Object(m)
    })
}

/// A valid group document to patch: tricky strings with what the rules forbid
/// removed (built directly; filtering random bodies rejects too many).
fn valid_doc() -> impl Strategy<Value = GroupDoc> {
    let text = |max| {
        tricky_string(max).prop_map(|s| {
            s.chars()
                .filter(|c| !c.is_control() && !crate::names::is_bidi_control(*c))
                .collect::<String>()
        })
    };
    (text(20), prop::option::of(text(30)), prop::collection::vec(text(6), 0..12)).prop_map(|(n, d, devs)| {
        let devices: Vec<String> = devs
            .into_iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        let body = json!({"name": format!("g{n}"), "description": d, "devices": devices.into_iter().take(RULES.max_devices).collect::<Vec<_>>()});
        validate_doc(&body, RULES).expect("a cleaned document is valid")
    })
}

/// JSON Patch operations, mostly well-formed, with paths in and out of the document.
fn patch_op() -> impl Strategy<Value = Value> {
    let op = prop::sample::select(vec![
        "add",
        "remove",
        "replace",
        "move",
        "copy",
        "test",
        "frobnicate",
    ]);
    let pointer = prop::sample::select(vec![
        "/name",
        "/description",
        "/devices",
        "/devices/-",
        "/devices/0",
        "/devices/1",
        "/devices/7",
        "/devices/01",
        "/devices/-1",
        "/devices/~1",
        "",
        "/",
        "/id",
        "/name/x",
        "/creation",
        "/devices/0/x",
    ]);
    let value = prop_oneof![
        3 => tricky_string(8).prop_map(Value::String),
        1 => prop::collection::vec(tricky_string(4).prop_map(Value::String), 0..4).prop_map(Value::Array),
        1 => json_value(),
    ];
    (op, pointer.clone(), pointer, value, any::<u8>()).prop_map(|(op, path, from, value, mask)| {
        let mut m = Map::new();
        if mask & 1 == 0 {
            m.insert("op".into(), json!(op));
        }
        if mask & 2 == 0 {
            m.insert("path".into(), json!(path));
        }
        if matches!(op, "move" | "copy") || mask & 4 != 0 {
            m.insert("from".into(), json!(from));
        }
        if mask & 8 == 0 {
            m.insert("value".into(), value);
        }
        Value::Object(m)
    })
}

/// What every accepted document must satisfy (docs/api/http.md "The group").
fn assert_valid(doc: &GroupDoc) {
    assert_eq!(doc.name, doc.name.trim());
    let n = doc.name.chars().count();
    assert!((1..=MAX_NAME_CHARS).contains(&n), "name length {n}");
    assert!(!doc.name.chars().any(char::is_control));
    assert!(doc.devices.len() <= RULES.max_devices);
    for (i, d) in doc.devices.iter().enumerate() {
        assert_eq!(check_device_id(d), Ok(()), "{d:?}");
        assert!(!doc.devices[..i].contains(d), "duplicate {d:?}");
    }
    // Normalising is idempotent: what we store validates to itself.
    assert_eq!(validate_doc(&doc.to_value(), RULES).as_ref(), Ok(doc));
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_accepts_only_valid(body in prop_oneof![json_value(), group_body()]) {
        match validate_doc(&body, RULES) {
            Ok(doc) => assert_valid(&doc),
            Err(crate::model::Invalid(m)) => prop_assert!(!m.is_empty()),
        }
    }

    #[test]
    fn valid_input_keeps_its_meaning(doc in valid_doc(), pad in "[ \t]{0,3}") {
        // Padding the name and repeating devices changes nothing.
        let mut devices = doc.devices.clone();
        devices.extend(doc.devices.iter().rev().cloned());
        let body = json!({"name": format!("{pad}{}{pad}", doc.name), "description": doc.description, "devices": devices, "success": true});
        prop_assert_eq!(validate_doc(&body, RULES), Ok(doc));
    }

    #[test]
    fn group_ids_round_trip(
        n in prop_oneof![1u64..crate::model::OFFICE_BASE, crate::model::OFFICE_BASE + 1..],
        s in "((grp|ofc)-)?[0-9+-]{0,22}",
    ) {
        prop_assert_eq!(GroupId::parse(&GroupId(n).to_string()), Some(GroupId(n)));
        if let Some(id) = GroupId::parse(&s) {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn json_patch_is_whole_or_nothing(doc in valid_doc(), ops in prop::collection::vec(patch_op(), 0..6)) {
        let parsed = match parse_json_patch(&Value::Array(ops), &LIMITS) {
            Ok(p) => p,
            Err(ApiError::InvalidPatch(m)) => {
                prop_assert!(m.starts_with("operation "), "{}", m);
                return Ok(());
            }
            Err(other) => {
                prop_assert!(false, "unexpected error {:?}", other);
                return Ok(());
            }
        };
        match apply_json_patch(&doc, &parsed, RULES, &LIMITS) {
            Ok(out) => assert_valid(&out),
            Err(ApiError::InvalidInput(_) | ApiError::InvalidPatch(_) | ApiError::PatchTestFailed(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
        // A failing operation appended to any patch makes the whole patch fail,
        // whatever the operations before it did.
        let mut failing = parsed;
        failing.extend(parse_json_patch(&json!([{"op": "test", "path": "/name", "value": 0}]), &LIMITS).expect("parses"));
        prop_assert!(apply_json_patch(&doc, &failing, RULES, &LIMITS).is_err());
    }

    #[test]
    fn json_patch_of_arbitrary_json_never_panics(doc in valid_doc(), body in json_value()) {
        if let Ok(ops) = parse_json_patch(&body, &LIMITS) {
            if let Ok(out) = apply_json_patch(&doc, &ops, RULES, &LIMITS) {
                assert_valid(&out);
            }
        }
    }

    #[test]
    fn a_passing_test_op_changes_nothing(doc in valid_doc(), ops in prop::collection::vec(patch_op(), 0..4)) {
        let Ok(parsed) = parse_json_patch(&Value::Array(ops.clone()), &LIMITS) else { return Ok(()) };
        let mut guarded = vec![json!({"op": "test", "path": "/name", "value": doc.name}), json!({"op": "test", "path": "/devices", "value": doc.devices})];
        guarded.extend(ops);
        let guarded = parse_json_patch(&Value::Array(guarded), &LIMITS).expect("still parses");
        // Same result; an error names the same problem (its operation index shifts by 2).
        let code = |r: Result<GroupDoc, ApiError>| r.map_err(|e| e.code());
        prop_assert_eq!(code(apply_json_patch(&doc, &guarded, RULES, &LIMITS)), code(apply_json_patch(&doc, &parsed, RULES, &LIMITS)));
    }

    #[test]
    fn merge_patch_is_whole_or_nothing(doc in valid_doc(), patch in prop_oneof![json_value(), group_body()]) {
        match apply_merge_patch(&doc, &patch, RULES, &LIMITS) {
            Ok(out) => {
                assert_valid(&out);
                // Merging the result into itself is the identity.
                prop_assert_eq!(apply_merge_patch(&out, &out.to_value(), RULES, &LIMITS), Ok(out.clone()));
            }
            Err(ApiError::InvalidInput(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
        prop_assert_eq!(apply_merge_patch(&doc, &json!({}), RULES, &LIMITS), Ok(doc));
    }

    #[test]
    fn router_never_panics(method in "[A-Z]{0,8}", path in "(/[a-zA-Z%0-9.+~-]{0,12}){0,6}", junk in any::<String>()) {
        for p in [path.as_str(), junk.as_str()] {
            if let Ok(m) = route(&method, p) {
                prop_assert!(m.params.iter().all(|s| !s.is_empty()));
            }
        }
    }

    #[test]
    fn path_segments_round_trip(seg in "\\PC{1,20}", dev in any::<String>().prop_filter("non-empty", |s| !s.is_empty())) {
        prop_assert_eq!(percent_decode(&encode(&dev)), Ok(dev.clone()));
        let m = route("GET", &format!("/api/groups/{}", encode(&seg))).expect("routes");
        prop_assert_eq!((m.op, m.params), (Op::GetGroup, vec![seg.clone()]));
        let m = route("DELETE", &format!("/api/groups/grp-1/devices/{}", encode(&dev))).expect("routes");
        prop_assert_eq!((m.op, m.params), (Op::RemoveDevice, vec!["grp-1".to_string(), dev.clone()]));
        // An encoded slash stays inside its segment; it never splits the path.
        let m = route("GET", &format!("/api/devices/{}/groups", encode(&format!("{seg}/x")))).expect("routes");
        prop_assert_eq!(m.params, vec![format!("{seg}/x")]);
    }

    #[test]
    fn bad_percent_escapes_are_invalid_input(prefix in "[a-z]{0,4}", tail in prop::sample::select(vec!["%", "%4", "%zz", "%C0%AF", "%ED%A0%80", "%FF", "%E2%82"])) {
        let path = format!("/api/groups/{prefix}{tail}");
        prop_assert!(matches!(route("GET", &path), Err(ApiError::InvalidInput(_))), "{path}");
    }

    /// The parser production uses: known names come back decoded, in order, whatever
    /// unknown ones (any text, encoded) stand between them.
    #[test]
    fn query_pairs_round_trip(
        values in prop::collection::vec(any::<String>(), 4),
        unknown in prop::collection::vec(any::<String>().prop_filter("not a known name", |k| !k.is_empty() && !KNOWN.contains(&k.as_str())), 0..4),
        take in 0usize..=4,
    ) {
        let mut parts = Vec::new();
        let mut want = Vec::new();
        for (i, (name, v)) in KNOWN.iter().zip(&values).take(take).enumerate() {
            parts.push(format!("{}={}", encode(name), encode(v)));
            if let Some(u) = unknown.get(i) {
                parts.push(format!("{}={}", encode(u), encode(v)));
            }
            want.push((*name, v.clone()));
        }
        prop_assert_eq!(parse_query(&parts.join("&"), &KNOWN), Ok(want));
    }
}
