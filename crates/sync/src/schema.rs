//! The document schema: what lives where inside the index and thread documents.
//!
//! Everything here is plain functions over automerge documents and transactions, with no IO,
//! so the schema is tested deterministically. Reads are forgiving (a missing or mistyped field
//! reads as absent, because a peer on another version may have written it); writes always
//! produce the full shape.

pub mod index;
pub mod ownership;
pub mod thread;
pub mod touched;

use automerge::{ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value};

/// The schema version written into every document. 2: a thread's tasks live in buckets.
pub const SCHEMA_VERSION: i64 = 2;

/// The id of a document in a space: `index`, or a thread id (32 lower-case hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(String);

/// The index document's id.
pub const INDEX_DOC: &str = "index";

impl DocId {
    pub fn index() -> Self {
        DocId(INDEX_DOC.to_owned())
    }

    /// A new random thread document id.
    pub fn new_thread() -> Self {
        DocId(crate::ids::hex(&rand::random::<[u8; 16]>()))
    }

    /// Parses a document id that came from a peer or a user; `None` unless it has one of the two
    /// valid shapes, so a peer cannot make us create arbitrary keys.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = s == INDEX_DOC
            || (s.len() == 32
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        valid.then(|| DocId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_index(&self) -> bool {
        self.0 == INDEX_DOC
    }
}

impl std::fmt::Display for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp in the documents.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn get_obj(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(_), id) => Some(id),
        _ => None,
    }
}

fn scalar(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => Some(s.into_owned()),
        _ => None,
    }
}

pub(crate) fn get_str(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<String> {
    match scalar(doc, obj, key)? {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(crate) fn get_i64(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<i64> {
    match scalar(doc, obj, key)? {
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Some(i),
        ScalarValue::Uint(u) => i64::try_from(u).ok(),
        _ => None,
    }
}

pub(crate) fn get_bool(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<bool> {
    match scalar(doc, obj, key)? {
        ScalarValue::Boolean(b) => Some(b),
        _ => None,
    }
}

/// The fields of one map object, read in a single pass over its entries.
///
/// Why: automerge 0.12 answers each `get` with a seek of its own through the document's
/// operations, some 7 µs on a thread of 1,000 tasks, while iterating one object's entries costs
/// about as much as a single `get`. Reading a whole task field by field took 80 ms for 1,000
/// tasks; this way it takes a few.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    entries: Vec<(String, Field)>,
}

#[derive(Debug)]
enum Field {
    Str(String),
    Int(i64),
    Bool(bool),
    Obj(ObjId),
    Other,
}

impl Fields {
    pub(crate) fn read(doc: &impl ReadDoc, obj: &ObjId) -> Fields {
        use automerge::{ScalarValueRef, ValueRef};
        let entries = doc
            .map_range(obj, ..)
            .map(|item| {
                let field = match &item.value {
                    ValueRef::Object(_) => Field::Obj(item.id()),
                    ValueRef::Scalar(ScalarValueRef::Str(s)) => Field::Str(s.to_string()),
                    ValueRef::Scalar(ScalarValueRef::Int(i) | ScalarValueRef::Timestamp(i)) => {
                        Field::Int(*i)
                    }
                    ValueRef::Scalar(ScalarValueRef::Uint(u)) => {
                        i64::try_from(*u).map_or(Field::Other, Field::Int)
                    }
                    ValueRef::Scalar(ScalarValueRef::Boolean(b)) => Field::Bool(*b),
                    ValueRef::Scalar(_) => Field::Other,
                };
                (item.key.into_owned(), field)
            })
            .collect();
        Fields { entries }
    }

    fn get(&self, key: &str) -> Option<&Field> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, f)| f)
    }

    pub(crate) fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Field::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn i64(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Field::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Field::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn obj(&self, key: &str) -> Option<&ObjId> {
        match self.get(key)? {
            Field::Obj(id) => Some(id),
            _ => None,
        }
    }
}

/// How deep [`to_json`] walks. Any member can write a document nested thousands of levels
/// deep; walking it recursively would overflow the stack (and JSON readers refuse such depth:
/// serde_json stops at 128). errand's own documents are at most five levels deep.
pub const MAX_JSON_DEPTH: usize = 64;

/// What [`to_json`] shows in place of an object nested deeper than [`MAX_JSON_DEPTH`].
pub const TOO_DEEP: &str = "(nested deeper than 64 levels: not shown)";

/// The document (or the object `obj` in it) as JSON, as it was at `heads` (now, when `None`).
/// This is what `errand at` prints. Objects deeper than [`MAX_JSON_DEPTH`] show as [`TOO_DEEP`].
pub fn to_json(doc: &impl ReadDoc, obj: &ObjId, heads: Option<&[ChangeHash]>) -> serde_json::Value {
    to_json_within(doc, obj, heads, MAX_JSON_DEPTH)
}

fn to_json_within(
    doc: &impl ReadDoc,
    obj: &ObjId,
    heads: Option<&[ChangeHash]>,
    depth: usize,
) -> serde_json::Value {
    use serde_json::Value as J;
    if depth == 0 {
        return J::String(TOO_DEEP.to_owned());
    }
    let kind = doc.object_type(obj).unwrap_or(ObjType::Map);
    let value_json = |value: Value<'_>, id: ObjId| match value {
        Value::Object(_) => to_json_within(doc, &id, heads, depth - 1),
        Value::Scalar(s) => scalar_json(&s),
    };
    match kind {
        ObjType::Map | ObjType::Table => {
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(obj, h).collect(),
                None => doc.keys(obj).collect(),
            };
            let mut out = serde_json::Map::new();
            for key in keys {
                let got = match heads {
                    Some(h) => doc.get_at(obj, key.as_str(), h),
                    None => doc.get(obj, key.as_str()),
                };
                if let Ok(Some((value, id))) = got {
                    out.insert(key, value_json(value, id));
                }
            }
            J::Object(out)
        }
        ObjType::List => {
            let len = match heads {
                Some(h) => doc.length_at(obj, h),
                None => doc.length(obj),
            };
            let items = (0..len)
                .filter_map(|i| {
                    let got = match heads {
                        Some(h) => doc.get_at(obj, i, h),
                        None => doc.get(obj, i),
                    };
                    got.ok().flatten().map(|(value, id)| value_json(value, id))
                })
                .collect();
            J::Array(items)
        }
        ObjType::Text => {
            let text = match heads {
                Some(h) => doc.text_at(obj, h),
                None => doc.text(obj),
            };
            J::String(text.unwrap_or_default())
        }
    }
}

fn scalar_json(s: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    match s {
        ScalarValue::Str(s) => J::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => J::from(*i),
        ScalarValue::Uint(u) => J::from(*u),
        ScalarValue::F64(f) => J::from(*f),
        ScalarValue::Counter(c) => J::from(i64::from(c)),
        ScalarValue::Boolean(b) => J::Bool(*b),
        ScalarValue::Bytes(b) => J::String(crate::ids::hex(b)),
        ScalarValue::Null | ScalarValue::Unknown { .. } => J::Null,
    }
}

/// One entry of a document's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The change hash, hex; usable with `errand at`.
    pub hash: String,
    /// The device that wrote it (hex id).
    pub device_id: String,
    /// The actor that wrote it: the device's id followed by its session (see
    /// [`crate::ids::session_actor`]).
    pub actor: String,
    pub seq: u64,
    /// Milliseconds since the Unix epoch, as the writing device saw it.
    pub time: i64,
    pub message: String,
}

/// Every change of a document in causal order, oldest first.
pub fn history(doc: &automerge::Automerge) -> Vec<HistoryEntry> {
    doc.get_changes(&[])
        .into_iter()
        .map(|change| HistoryEntry {
            hash: change.hash().to_string(),
            device_id: crate::ids::actor_device(change.actor_id()),
            actor: change.actor_id().to_hex_string(),
            seq: change.seq(),
            time: change.timestamp(),
            message: change.message().map(str::to_owned).unwrap_or_default(),
        })
        .collect()
}

/// Parses change hashes as printed by [`history`], separated by commas or spaces.
pub fn parse_heads(text: &str) -> Result<Vec<ChangeHash>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ChangeHash>()
                .map_err(|_| format!("{s:?} is not a change hash (64 hex digits)"))
        })
        .collect()
}
