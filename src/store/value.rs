//! A group's stored value, and the view readers get of it. A group is
//! `revision | creation ms | lastModified ms | public JSON` (three big-endian 8-byte
//! numbers, then the exact JSON fields the API shows), so a read answers by copying
//! bytes into the response instead of parsing and re-serialising. A group whose device
//! list is longer than `INLINE_MAX` is *split*: its value holds the JSON without the
//! list, and the list is kept in pieces (`pieces.rs` lays them out and joins them
//! back). This file is the bottom of the group code: it reads no other store file.

use serde::{Deserialize, Serialize};
use sled::IVec;

use super::Error;
use crate::model::{GroupDoc, GroupId};
use crate::time::rfc3339_ms;

/// A device list longer than this (bytes of JSON) is stored in pieces.
pub(super) const INLINE_MAX: usize = 2048;
/// The first byte after the header of a split group's value (a whole one has `{`).
pub(super) const MARK: u8 = 0x01;
/// `MARK`, the cut and the piece count.
const SPLIT_PREFIX: usize = 9;

/// A group's stored form, split around its device list: what a write stores.
pub(super) struct Encoded {
    /// Header, then the JSON up to and including `"devices":[`.
    head: Vec<u8>,
    /// The devices as JSON strings, comma-joined.
    pub(super) list: Vec<u8>,
    /// Each device's byte range in `list`.
    pub(super) spans: Vec<(usize, usize)>,
    /// `],"creation":…}`.
    tail: Vec<u8>,
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a plain string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl Encoded {
    /// The stored form: the same bytes serde gives for `PublicGroup` (field
    /// order id, name, description, devices, creation, lastModified), after the header.
    pub(super) fn new(
        id: GroupId,
        doc: &GroupDoc,
        revision: u64,
        creation: i64,
        modified: i64,
    ) -> Encoded {
        let mut head = Vec::with_capacity(HEADER + 96);
        head.extend_from_slice(&revision.to_be_bytes());
        head.extend_from_slice(&creation.to_be_bytes());
        head.extend_from_slice(&modified.to_be_bytes());
        head.extend_from_slice(b"{\"id\":");
        push_json_str(&mut head, &id.to_string());
        head.extend_from_slice(b",\"name\":");
        push_json_str(&mut head, &doc.name);
        head.extend_from_slice(b",\"description\":");
        match &doc.description {
            Some(d) => push_json_str(&mut head, d),
            None => head.extend_from_slice(b"null"),
        }
        head.extend_from_slice(b",\"devices\":[");
        let mut list = Vec::with_capacity(doc.devices.len() * 16);
        let mut spans = Vec::with_capacity(doc.devices.len());
        for (i, d) in doc.devices.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            let start = list.len();
            push_json_str(&mut list, d);
            spans.push((start, list.len()));
        }
        let mut tail = Vec::with_capacity(64);
        tail.extend_from_slice(b"],\"creation\":");
        push_json_str(&mut tail, &rfc3339_ms(creation));
        tail.extend_from_slice(b",\"lastModified\":");
        push_json_str(&mut tail, &rfc3339_ms(modified));
        tail.push(b'}');
        Encoded {
            head,
            list,
            spans,
            tail,
        }
    }

    /// Whether the group is stored in pieces.
    pub(super) fn split(&self) -> bool {
        self.list.len() > INLINE_MAX
    }

    /// The whole value: header and public JSON (what a read of the group gives).
    pub(super) fn whole(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.list.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.list);
        out.extend_from_slice(&self.tail);
        out
    }

    /// The group's value when it is split into `pieces` pieces.
    pub(super) fn cut(&self, pieces: u32) -> Vec<u8> {
        let json_head = &self.head[HEADER..];
        let mut out = Vec::with_capacity(self.head.len() + SPLIT_PREFIX + self.tail.len());
        out.extend_from_slice(&self.head[..HEADER]);
        out.push(MARK);
        // A group's JSON without its list is far below 4 GiB (names and descriptions
        // are bounded by validation).
        out.extend_from_slice(
            &u32::try_from(json_head.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&pieces.to_be_bytes());
        out.extend_from_slice(json_head);
        out.extend_from_slice(&self.tail);
        out
    }

    /// The devices `from..to` as stored in a piece.
    pub(super) fn run(&self, from: usize, to: usize) -> &[u8] {
        &self.list[self.spans[from].0..self.spans[to - 1].1]
    }
}

/// Where in a split value the list goes (an index into the value), and how many pieces
/// it names. None for a whole value (or a split one too short to hold its prefix).
fn cut_of(raw: &[u8]) -> Option<(usize, u32)> {
    if raw.get(HEADER) != Some(&MARK) {
        return None;
    }
    let num = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?))
    };
    let at = HEADER + SPLIT_PREFIX + usize::try_from(num(HEADER + 1)?).ok()?;
    (at <= raw.len()).then_some((at, num(HEADER + 5)?))
}

/// Whether a stored group value is split (its pieces must be read with it).
pub(super) fn is_split(raw: &[u8]) -> bool {
    cut_of(raw).is_some()
}

/// The number of pieces a stored group value names (0 for a whole value).
pub(super) fn piece_count(raw: &[u8]) -> u32 {
    cut_of(raw).map_or(0, |(_, n)| n)
}

/// Joins a split value and its pieces into the whole value. None when the pieces are
/// not as many as the value names.
pub(super) fn join(raw: &[u8], pieces: &[IVec]) -> Option<Vec<u8>> {
    let (at, count) = cut_of(raw)?;
    if pieces.len() != count as usize {
        return None;
    }
    let len: usize = pieces.iter().map(|p| p.len() + 1).sum();
    let mut out = Vec::with_capacity(raw.len() + len);
    out.extend_from_slice(&raw[..HEADER]);
    out.extend_from_slice(&raw[HEADER + SPLIT_PREFIX..at]);
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&raw[at..]);
    Some(out)
}

/// Room `push_served` adds at most.
const ORIGIN_BYTES: usize = 20;

/// Appends a group's stored public JSON (an object) as the API serves it: with
/// `"origin"` (`"office"` or `"local"`, from the ID) as its last member. The origin is
/// never stored: the ID says it, so stores and backups made before it need nothing.
pub fn push_served(out: &mut Vec<u8>, id: GroupId, json: &[u8]) {
    match json.split_last() {
        Some((b'}', inner)) => {
            out.extend_from_slice(inner);
            out.extend_from_slice(b",\"origin\":\"");
            out.extend_from_slice(id.origin().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        // Not an object (never stored so): passed on as it is.
        _ => out.extend_from_slice(json),
    }
}

/// Bytes before the public JSON in a stored group (revision, creation, lastModified).
pub(super) const HEADER: usize = 24;

/// A stored group as read from the store; cheap to clone (sled's `IVec`).
#[derive(Debug, Clone)]
pub struct GroupView {
    pub id: GroupId,
    raw: IVec,
}

impl GroupView {
    /// A view of a whole value (a split one is joined first: `Store::view`).
    pub(super) fn new(id: GroupId, raw: IVec) -> Result<GroupView, Error> {
        if raw.len() < HEADER + 2 || is_split(&raw) {
            return Err(Error::corrupt(format!("group record {id}")));
        }
        Ok(GroupView { id, raw })
    }

    /// A view of a remembered answer (an idempotent replay): only the revision and the
    /// public JSON are known; the timestamps live in the JSON.
    pub(super) fn from_parts(id: GroupId, revision: u64, json: &[u8]) -> Result<GroupView, Error> {
        let mut bytes = Vec::with_capacity(HEADER + json.len());
        bytes.extend_from_slice(&revision.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(json);
        GroupView::new(id, bytes.into())
    }

    fn num(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.raw[at..at + 8]);
        u64::from_be_bytes(b)
    }

    /// The revision, sent as the strong `ETag`.
    pub fn revision(&self) -> u64 {
        self.num(0)
    }

    pub(super) fn last_modified(&self) -> i64 {
        self.num(16) as i64
    }

    pub(super) fn creation(&self) -> i64 {
        self.num(8) as i64
    }

    /// The group's public fields as one JSON object: `{"id", "name", "description",
    /// "devices", "creation", "lastModified"}`, as stored (`served` adds `origin`).
    pub fn json(&self) -> &[u8] {
        &self.raw[HEADER..]
    }

    /// The group as the API serves it: `json` and `origin` (`push_served`).
    pub fn served(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json().len() + ORIGIN_BYTES);
        push_served(&mut out, self.id, self.json());
        out
    }

    /// Whether the group's `devices` holds `device` (parses only that member).
    pub(super) fn has_device(&self, device: &str) -> Result<bool, Error> {
        #[derive(Deserialize)]
        struct DevicesOnly {
            devices: Vec<String>,
        }
        serde_json::from_slice::<DevicesOnly>(self.json())
            .map(|d| d.devices.iter().any(|d| d == device))
            .map_err(|e| self.corrupt(e))
    }

    /// The group's name (parses only that member).
    pub(super) fn name(&self) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct NameOnly {
            name: String,
        }
        serde_json::from_slice::<NameOnly>(self.json())
            .map(|n| n.name)
            .map_err(|e| self.corrupt(e))
    }

    /// This group's record does not parse.
    fn corrupt(&self, e: serde_json::Error) -> Error {
        Error::corrupt_json(format!("group record {}", self.id), e)
    }

    /// The client-controlled part, parsed.
    pub fn doc(&self) -> Result<GroupDoc, Error> {
        serde_json::from_slice::<PublicGroup>(self.json())
            .map(|p| GroupDoc {
                name: p.name,
                description: p.description,
                devices: p.devices,
            })
            .map_err(|e| self.corrupt(e))
    }
}

/// The wire form of a group (field order is the API's; serialising it again gives the
/// same bytes, which restore relies on for change-feed entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicGroup {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) devices: Vec<String>,
    pub(super) creation: String,
    #[serde(rename = "lastModified")]
    pub(super) last_modified: String,
}

/// A group's whole value (header and public JSON), as a read gives it.
pub(super) fn encode(
    id: GroupId,
    doc: &GroupDoc,
    revision: u64,
    creation: i64,
    modified: i64,
) -> Vec<u8> {
    Encoded::new(id, doc, revision, creation, modified).whole()
}
