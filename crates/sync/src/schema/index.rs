//! The index document: one per space. It holds the schema version, the space, the member
//! certificates and revocations, each device's last known addresses, and the thread list.
//!
//! ```text
//! { schema, space, root,
//!   members:  { <device>: { name, role, added_by, added_at, signature } },
//!   revoked:  { <device>: { revoked_by, revoked_at, signature } },
//!   addrs:    { <device>: { addrs: "ip:port ip:port", relay, at } },   written by that device only
//!   threads:  { <thread>: { title, created, created_by, archived } },
//!   schedules: { <schedule>: { ... } },                               see [`schedules`]
//!   notify:   { <device>: { <id>: { url, events, content, removed } } } }   that device's only
//! ```

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc, hydrate};
use serde::{Deserialize, Serialize};

use super::{SCHEMA_VERSION, get_bool, get_i64, get_obj, get_str};

pub mod schedules;

/// A member certificate as stored: plain fields, verified by the pairing layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub device: String,
    pub name: String,
    pub role: String,
    pub added_by: String,
    pub added_at: u64,
    pub signature: String,
}

/// A signed revocation as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEntry {
    pub device: String,
    pub revoked_by: String,
    pub revoked_at: u64,
    pub signature: String,
}

/// Where a device was last reachable, as that device itself reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrEntry {
    pub device: String,
    pub addrs: Vec<String>,
    pub relay: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadEntry {
    pub id: String,
    pub title: String,
    pub created: i64,
    pub created_by: String,
    pub archived: bool,
}

/// Writes the skeleton of a new index document. Only the device that creates the space calls
/// this; everyone else receives the skeleton by sync, so no two devices create the same
/// top-level objects concurrently.
pub fn create(tx: &mut impl Transactable, space: &str, root: &str) -> Result<(), AutomergeError> {
    tx.put(ROOT, "schema", SCHEMA_VERSION)?;
    tx.put(ROOT, "space", space)?;
    tx.put(ROOT, "root", root)?;
    for key in [
        "members",
        "revoked",
        "addrs",
        "threads",
        "schedules",
        "notify",
    ] {
        tx.put_object(ROOT, key, ObjType::Map)?;
    }
    Ok(())
}

fn section(doc: &impl ReadDoc, key: &str) -> Result<ObjId, AutomergeError> {
    get_obj(doc, &ROOT, key).ok_or_else(|| AutomergeError::InvalidOp(ObjType::Map))
}

pub fn space(doc: &impl ReadDoc) -> Option<String> {
    get_str(doc, &ROOT, "space")
}

pub fn root(doc: &impl ReadDoc) -> Option<String> {
    get_str(doc, &ROOT, "root")
}

pub fn put_member(tx: &mut impl Transactable, m: &MemberEntry) -> Result<(), AutomergeError> {
    let members = section(tx, "members")?;
    let obj = tx.put_object(&members, m.device.as_str(), ObjType::Map)?;
    tx.put(&obj, "name", m.name.as_str())?;
    tx.put(&obj, "role", m.role.as_str())?;
    tx.put(&obj, "added_by", m.added_by.as_str())?;
    tx.put(&obj, "added_at", m.added_at)?;
    tx.put(&obj, "signature", m.signature.as_str())?;
    Ok(())
}

pub fn members(doc: &impl ReadDoc) -> Vec<MemberEntry> {
    let Some(members) = get_obj(doc, &ROOT, "members") else {
        return Vec::new();
    };
    doc.keys(&members)
        .filter_map(|device| {
            let obj = get_obj(doc, &members, &device)?;
            Some(MemberEntry {
                name: get_str(doc, &obj, "name")?,
                role: get_str(doc, &obj, "role")?,
                added_by: get_str(doc, &obj, "added_by")?,
                added_at: u64::try_from(get_i64(doc, &obj, "added_at")?).ok()?,
                signature: get_str(doc, &obj, "signature")?,
                device,
            })
        })
        .collect()
}

pub fn put_revocation(
    tx: &mut impl Transactable,
    r: &RevocationEntry,
) -> Result<(), AutomergeError> {
    let revoked = section(tx, "revoked")?;
    let obj = tx.put_object(&revoked, r.device.as_str(), ObjType::Map)?;
    tx.put(&obj, "revoked_by", r.revoked_by.as_str())?;
    tx.put(&obj, "revoked_at", r.revoked_at)?;
    tx.put(&obj, "signature", r.signature.as_str())?;
    Ok(())
}

pub fn revocations(doc: &impl ReadDoc) -> Vec<RevocationEntry> {
    let Some(revoked) = get_obj(doc, &ROOT, "revoked") else {
        return Vec::new();
    };
    doc.keys(&revoked)
        .filter_map(|device| {
            let obj = get_obj(doc, &revoked, &device)?;
            Some(RevocationEntry {
                revoked_by: get_str(doc, &obj, "revoked_by")?,
                revoked_at: u64::try_from(get_i64(doc, &obj, "revoked_at")?).ok()?,
                signature: get_str(doc, &obj, "signature")?,
                device,
            })
        })
        .collect()
}

/// Records where `device` can be reached. Returns `false` (and writes nothing) when the stored
/// value is already this, so restarts at the same address do not grow the history.
pub fn set_addrs(tx: &mut impl Transactable, entry: &AddrEntry) -> Result<bool, AutomergeError> {
    if addrs(tx).iter().any(|e| e == entry) {
        return Ok(false);
    }
    let section = section(tx, "addrs")?;
    let obj = tx.put_object(&section, entry.device.as_str(), ObjType::Map)?;
    tx.put(&obj, "addrs", entry.addrs.join(" "))?;
    if let Some(relay) = &entry.relay {
        tx.put(&obj, "relay", relay.as_str())?;
    }
    Ok(true)
}

pub fn addrs(doc: &impl ReadDoc) -> Vec<AddrEntry> {
    let Some(section) = get_obj(doc, &ROOT, "addrs") else {
        return Vec::new();
    };
    doc.keys(&section)
        .filter_map(|device| {
            let obj = get_obj(doc, &section, &device)?;
            Some(AddrEntry {
                addrs: get_str(doc, &obj, "addrs")?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                relay: get_str(doc, &obj, "relay"),
                device,
            })
        })
        .collect()
}

pub fn add_thread(tx: &mut impl Transactable, t: &ThreadEntry) -> Result<(), AutomergeError> {
    let threads = section(tx, "threads")?;
    // One batch (see the module docs of `schema`).
    let entry: hydrate::Value = HashMap::from([
        ("title", hydrate::Value::scalar(t.title.as_str())),
        ("created", hydrate::Value::scalar(t.created)),
        ("created_by", hydrate::Value::scalar(t.created_by.as_str())),
        ("archived", hydrate::Value::scalar(t.archived)),
    ])
    .into();
    tx.batch_create_object(&threads, t.id.as_str(), &entry, false)?;
    Ok(())
}

pub fn threads(doc: &impl ReadDoc) -> Vec<ThreadEntry> {
    let Some(threads) = get_obj(doc, &ROOT, "threads") else {
        return Vec::new();
    };
    let mut out: Vec<ThreadEntry> = doc
        .keys(&threads)
        .filter_map(|id| {
            let obj = get_obj(doc, &threads, &id)?;
            Some(ThreadEntry {
                title: get_str(doc, &obj, "title").unwrap_or_default(),
                created: get_i64(doc, &obj, "created").unwrap_or(0),
                created_by: get_str(doc, &obj, "created_by").unwrap_or_default(),
                archived: get_bool(doc, &obj, "archived").unwrap_or(false),
                id,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    out
}

/// The ids of the listed threads that start with `needle` (just `needle` when it is a whole
/// id): a lookup by prefix reads the keys of the thread list, not each thread's entry.
pub fn thread_ids_like(doc: &impl ReadDoc, needle: &str) -> Vec<String> {
    let Some(threads) = get_obj(doc, &ROOT, "threads") else {
        return Vec::new();
    };
    if get_obj(doc, &threads, needle).is_some() {
        return vec![needle.to_owned()];
    }
    doc.keys(&threads)
        .filter(|id| id.starts_with(needle))
        .collect()
}

/// Where a device wants to be told of events: an HTTP endpoint that takes a POSTed message
/// (a self-hosted ntfy topic, a UnifiedPush endpoint). Written by that device only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyEntry {
    pub id: String,
    /// The device that registered it.
    pub device: String,
    pub url: String,
    /// Which events: `done`, `failed`, `approval`, `question`, `missed`.
    pub events: Vec<String>,
    /// Whether the message may carry the task's prompt or result (off unless asked for).
    pub content: bool,
}

/// Registers an endpoint for `entry.device` (this device). Fails with
/// [`AutomergeError::InvalidOp`] in a space made before notifications existed.
pub fn add_notify(tx: &mut impl Transactable, entry: &NotifyEntry) -> Result<(), AutomergeError> {
    let section = section(tx, "notify")?;
    let mine = match get_obj(tx, &section, &entry.device) {
        Some(obj) => obj,
        None => tx.put_object(&section, entry.device.as_str(), ObjType::Map)?,
    };
    let obj = tx.put_object(&mine, entry.id.as_str(), ObjType::Map)?;
    tx.put(&obj, "url", entry.url.as_str())?;
    tx.put(&obj, "events", entry.events.join(","))?;
    tx.put(&obj, "content", entry.content)?;
    Ok(())
}

/// Stops using one of this device's endpoints (marked, since nothing is ever deleted).
/// Returns whether there was one.
pub fn remove_notify(
    tx: &mut impl Transactable,
    device: &str,
    id: &str,
) -> Result<bool, AutomergeError> {
    let section = section(tx, "notify")?;
    let Some(obj) = get_obj(tx, &section, device).and_then(|mine| get_obj(tx, &mine, id)) else {
        return Ok(false);
    };
    tx.put(&obj, "removed", true)?;
    Ok(true)
}

/// Every endpoint registered and not removed, by device.
pub fn notify_entries(doc: &impl ReadDoc) -> Vec<NotifyEntry> {
    let Some(section) = get_obj(doc, &ROOT, "notify") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for device in doc.keys(&section).collect::<Vec<_>>() {
        let Some(mine) = get_obj(doc, &section, &device) else {
            continue;
        };
        for id in doc.keys(&mine).collect::<Vec<_>>() {
            let Some(obj) = get_obj(doc, &mine, &id) else {
                continue;
            };
            if get_bool(doc, &obj, "removed").unwrap_or(false) {
                continue;
            }
            let Some(url) = get_str(doc, &obj, "url") else {
                continue;
            };
            out.push(NotifyEntry {
                id,
                device: device.clone(),
                url,
                events: get_str(doc, &obj, "events")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect(),
                content: get_bool(doc, &obj, "content").unwrap_or(false),
            });
        }
    }
    out
}
