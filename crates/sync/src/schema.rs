//! The document schema: what lives where inside the index and thread documents.
//!
//! Everything here is plain functions over automerge documents and transactions, with no IO,
//! so the schema is tested deterministically. Reads are forgiving (a missing or mistyped field
//! reads as absent, because a peer on another version may have written it); writes always
//! produce the full shape.
//!
//! A new object written with its fields (a thread, a task, a message, a thread's listing) is
//! written as one batch (`Transactable::batch_create_object`, `init_root_from_hydrate`):
//! automerge 0.12 places each operation made one by one in its columns on its own, re-encoding
//! them each time, and a batch places them together. A send into a new thread cost the phone
//! about a sixth less CPU that way.

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

/// Every change of a document in causal order, oldest first. Reads the changes' metadata only,
/// not their operations.
pub fn history(doc: &automerge::Automerge) -> Vec<HistoryEntry> {
    doc.get_changes_meta(&[])
        .iter()
        .map(history_entry)
        .collect()
}

/// The newest `n` changes of a document, found by walking back from its heads: the cost grows
/// with `n`, not with the document's history. Oldest first, each change after those it
/// depends on.
///
/// The walk takes the newest change it can reach (by the writer's clock, then hash). Where
/// devices' clocks disagree this can differ from the last `n` of [`history`], which orders
/// concurrent changes its own way; every change shown is still in causal order.
pub fn history_tail(doc: &automerge::Automerge, n: usize) -> Vec<HistoryEntry> {
    use std::collections::{BinaryHeap, HashMap, HashSet};
    type Meta = automerge::ChangeMetadata<'static>;
    let meta = |hash: &ChangeHash| doc.get_change_meta_by_hash(hash).map(|m| m.into_owned());
    let mut frontier: BinaryHeap<(i64, ChangeHash)> = BinaryHeap::new();
    let mut reached: HashMap<ChangeHash, Meta> = HashMap::new();
    for head in doc.get_heads() {
        if let Some(m) = meta(&head) {
            frontier.push((m.timestamp, head));
            reached.insert(head, m);
        }
    }
    let mut taken: HashMap<ChangeHash, Meta> = HashMap::new();
    while taken.len() < n {
        let Some((_, hash)) = frontier.pop() else {
            break;
        };
        let Some(m) = reached.remove(&hash) else {
            continue;
        };
        for dep in &m.deps {
            if !taken.contains_key(dep)
                && !reached.contains_key(dep)
                && let Some(d) = meta(dep)
            {
                frontier.push((d.timestamp, *dep));
                reached.insert(*dep, d);
            }
        }
        taken.insert(hash, m);
    }
    // Causal order within what was taken: each change after its dependencies (depth first,
    // older starts first).
    let mut starts: Vec<(i64, ChangeHash)> =
        taken.values().map(|m| (m.timestamp, m.hash)).collect();
    starts.sort();
    let mut placed: HashSet<ChangeHash> = HashSet::new();
    let mut out = Vec::with_capacity(taken.len());
    for (_, start) in starts {
        let mut stack = vec![(start, false)];
        while let Some((hash, deps_done)) = stack.pop() {
            if placed.contains(&hash) {
                continue;
            }
            let Some(m) = taken.get(&hash) else {
                continue;
            };
            if deps_done {
                placed.insert(hash);
                out.push(history_entry(m));
            } else {
                stack.push((hash, true));
                stack.extend(
                    m.deps
                        .iter()
                        .filter(|d| taken.contains_key(d))
                        .map(|d| (*d, false)),
                );
            }
        }
    }
    out
}

fn history_entry(m: &automerge::ChangeMetadata<'_>) -> HistoryEntry {
    HistoryEntry {
        hash: m.hash.to_string(),
        device_id: crate::ids::actor_device(&m.actor),
        actor: m.actor.to_hex_string(),
        seq: m.seq,
        time: m.timestamp,
        message: m.message.as_deref().unwrap_or_default().to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{ActorId, Automerge, ROOT};

    use super::*;

    fn commit(doc: &mut Automerge, n: i64, time: i64) {
        doc.transact_with(
            |_| {
                CommitOptions::default()
                    .with_message(format!("c{n}"))
                    .with_time(time)
            },
            |tx| tx.put(ROOT, format!("k{n}"), n),
        )
        .unwrap();
    }

    /// Whether each entry comes after every entry it depends on.
    fn causal(doc: &Automerge, entries: &[HistoryEntry]) -> bool {
        let at: std::collections::HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.hash.as_str(), i))
            .collect();
        entries.iter().enumerate().all(|(i, e)| {
            let meta = doc
                .get_change_meta_by_hash(&e.hash.parse().unwrap())
                .unwrap();
            meta.deps
                .iter()
                .all(|d| at.get(d.to_string().as_str()).is_none_or(|j| *j < i))
        })
    }

    #[test]
    fn the_tail_of_a_linear_history_is_its_last_entries() {
        let mut doc = Automerge::new();
        for n in 0..30 {
            commit(&mut doc, n, 1_000 + n);
        }
        let all = history(&doc);
        assert_eq!(all.len(), 30);
        for n in [0, 1, 5, 29, 30, 45] {
            let tail = history_tail(&doc, n);
            assert_eq!(tail, all[all.len() - n.min(30)..], "n = {n}");
        }
    }

    #[test]
    fn the_tail_of_concurrent_histories_is_in_causal_order() {
        let mut a = Automerge::new().with_actor(ActorId::from([1u8; 16]));
        for n in 0..5 {
            commit(&mut a, n, 1_000 + n);
        }
        let mut b = a.fork().with_actor(ActorId::from([2u8; 16]));
        for n in 0..6 {
            // b's clock runs behind a's: taking by time alone would put a dependency after
            // the change that depends on it.
            commit(&mut a, 10 + n, 2_000 + n);
            commit(&mut b, 20 + n, 500 + n);
        }
        a.merge(&mut b).unwrap();
        commit(&mut a, 99, 3_000);
        let all = history(&a);
        for n in 0..=all.len() + 2 {
            let tail = history_tail(&a, n);
            assert_eq!(tail.len(), n.min(all.len()), "n = {n}");
            assert!(causal(&a, &tail), "n = {n}: {tail:?}");
            // The newest change is always there.
            if n > 0 {
                assert_eq!(tail.last().unwrap().message, "c99");
            }
        }
        let mut whole: Vec<String> = history_tail(&a, all.len())
            .into_iter()
            .map(|e| e.hash)
            .collect();
        let mut every: Vec<String> = all.into_iter().map(|e| e.hash).collect();
        whole.sort();
        every.sort();
        assert_eq!(whole, every);
    }

    #[test]
    fn a_thread_is_found_by_its_whole_id_or_a_prefix_of_it() {
        let mut doc = Automerge::new();
        let ids = ["ab12", "ab34", "cd56"];
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            index::create(tx, "space", "root")?;
            for id in ids {
                index::add_thread(
                    tx,
                    &index::ThreadEntry {
                        id: id.into(),
                        title: format!("thread {id}"),
                        created: 1,
                        created_by: "dev".into(),
                        archived: false,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(index::thread_ids_like(&doc, "cd"), vec!["cd56"]);
        assert_eq!(index::thread_ids_like(&doc, "ab34"), vec!["ab34"]);
        let mut both = index::thread_ids_like(&doc, "ab");
        both.sort();
        assert_eq!(both, vec!["ab12", "ab34"]);
        assert!(index::thread_ids_like(&doc, "zz").is_empty());
        assert!(index::thread_ids_like(&Automerge::new(), "ab").is_empty());
    }
}
