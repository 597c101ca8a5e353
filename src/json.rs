//! Building JSON answers as bytes: the members of an object and arrays of values that
//! are JSON already (a stored group, a change-feed entry). Answers are written straight
//! into one buffer instead of through a `serde_json::Value`, so a list copies each
//! stored group once. Below both `api/` (which builds members) and `http/` (which puts
//! the envelope around them).

/// Appends the members of a JSON object (`{...}`) without its braces.
pub fn push_object_members(out: &mut Vec<u8>, object: &[u8]) {
    if object.len() >= 2 {
        let inner = &object[1..object.len() - 1];
        if !inner.is_empty() {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(inner);
        }
    }
}

/// Appends `"name":<json>` as a member.
pub fn push_member(out: &mut Vec<u8>, name: &str, json: &[u8]) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json);
}

/// Appends JSON values comma-separated (the inside of an array).
pub fn push_joined<'a, I>(out: &mut Vec<u8>, values: I)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    let values = values.into_iter();
    out.reserve(values.clone().map(|v| v.len() + 1).sum());
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v);
    }
}

/// A JSON array of values that are JSON already.
pub fn array<'a, I>(values: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    let mut out = Vec::with_capacity(2);
    out.push(b'[');
    push_joined(&mut out, values);
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_arrays() {
        let mut m = Vec::new();
        push_object_members(&mut m, br#"{"id":"grp-1","name":"x"}"#);
        push_object_members(&mut m, b"{}");
        push_member(&mut m, "list", &array([&b"1"[..], b"{}", b"\"a\""]));
        push_member(&mut m, "none", &array(std::iter::empty::<&[u8]>()));
        assert_eq!(
            m,
            br#""id":"grp-1","name":"x","list":[1,{},"a"],"none":[]"#.to_vec()
        );
    }
}
