//! Approvals in a thread: the executor asks before a risky action, each deciding device
//! answers in its own entry, signed over the exact request.
//!
//! ```text
//! approvals: { <approval>: { task, action, class, requested_by, requested_at, expires_at,
//!                            expired_at,
//!                            decisions: { <device>: { approve, at, signature } } } }
//! ```

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use super::{creator, section};
use crate::schema::{Fields, get_obj};

/// What the executor writes to ask before a risky action.
#[derive(Clone, Debug)]
pub struct NewApproval<'a> {
    pub id: &'a str,
    pub task: &'a str,
    /// What will happen, for the person deciding ("run shell command `ls`").
    pub action: &'a str,
    /// The policy's risk class (shell, delete, network, screenshot, input).
    pub class: &'a str,
    pub requested_by: &'a str,
    pub requested_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub device: String,
    pub approve: bool,
    pub at: i64,
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub thread: String,
    pub task: String,
    pub action: String,
    pub class: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub expires_at: i64,
    pub decisions: Vec<Decision>,
    /// The asking device gave up waiting (by its clock): no decision counts any more.
    pub expired: bool,
}

pub fn request_approval(
    tx: &mut impl Transactable,
    a: &NewApproval<'_>,
) -> Result<(), AutomergeError> {
    let approvals = section(tx, "approvals")?;
    let obj = tx.put_object(&approvals, a.id, ObjType::Map)?;
    tx.put(&obj, "task", a.task)?;
    tx.put(&obj, "action", a.action)?;
    tx.put(&obj, "class", a.class)?;
    tx.put(&obj, "requested_by", a.requested_by)?;
    tx.put(&obj, "requested_at", a.requested_at)?;
    tx.put(&obj, "expires_at", a.expires_at)?;
    tx.put_object(&obj, "decisions", ObjType::Map)?;
    Ok(())
}

/// Records that the executor stopped waiting for a decision: the request expired by its
/// clock. Asking device only.
pub fn expire_approval(
    tx: &mut impl Transactable,
    approval: &str,
    at: i64,
) -> Result<(), AutomergeError> {
    let approvals = section(tx, "approvals")?;
    let obj = get_obj(tx, &approvals, approval).ok_or(AutomergeError::InvalidOp(ObjType::Map))?;
    tx.put(&obj, "expired_at", at)?;
    Ok(())
}

/// Whether the device that created `obj` wrote `key` of it (among concurrent writes too: a
/// member that overwrites the field does not hide the creator's value).
fn written_by_creator(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> bool {
    let by = creator(obj);
    doc.get_all(obj, key).unwrap_or_default().iter().any(
        |(_, op)| matches!(op, ObjId::Id(_, actor, _) if crate::ids::actor_device(actor) == by),
    )
}

/// Records one device's signed decision on an approval.
pub fn decide(
    tx: &mut impl Transactable,
    approval: &str,
    decision: &Decision,
) -> Result<(), AutomergeError> {
    let approvals = section(tx, "approvals")?;
    let obj = get_obj(tx, &approvals, approval).ok_or(AutomergeError::InvalidOp(ObjType::Map))?;
    let decisions =
        get_obj(tx, &obj, "decisions").ok_or(AutomergeError::InvalidOp(ObjType::Map))?;
    let entry = tx.put_object(&decisions, decision.device.as_str(), ObjType::Map)?;
    tx.put(&entry, "approve", decision.approve)?;
    tx.put(&entry, "at", decision.at)?;
    tx.put(&entry, "signature", decision.signature.as_str())?;
    Ok(())
}

/// The name under which [`approvals`] is kept as a stored view (`Repo::read_views`). Bump it
/// whenever [`Approval`], its encoding or what [`approvals`] returns changes.
pub const APPROVALS_VIEW: &str = "thread-approvals/1";

/// Every approval request of the thread, oldest first, with every decision written (which of
/// them counts is for the reader to judge, by membership and signature).
pub fn approvals(doc: &impl ReadDoc, thread: &str) -> Vec<Approval> {
    let Some(approvals) = get_obj(doc, &ROOT, "approvals") else {
        return Vec::new();
    };
    let mut out: Vec<Approval> = objects(doc, &approvals)
        .into_iter()
        .filter_map(|(id, obj)| approval_at(doc, thread, id, &obj))
        .collect();
    out.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
    out
}

/// One approval request, by its id (a few map look-ups, whatever the number of requests).
pub fn approval(doc: &impl ReadDoc, thread: &str, id: &str) -> Option<Approval> {
    let approvals = get_obj(doc, &ROOT, "approvals")?;
    let obj = get_obj(doc, &approvals, id)?;
    approval_at(doc, thread, id.to_owned(), &obj)
}

/// The entries of a map that are objects, with their keys.
fn objects(doc: &impl ReadDoc, map: &ObjId) -> Vec<(String, ObjId)> {
    doc.map_range(map, ..)
        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
        .map(|item| (item.key.to_string(), item.id()))
        .collect()
}

fn approval_at(doc: &impl ReadDoc, thread: &str, id: String, obj: &ObjId) -> Option<Approval> {
    let fields = Fields::read(doc, obj);
    let decisions = fields
        .obj("decisions")
        .map(|d| {
            objects(doc, d)
                .into_iter()
                .filter_map(|(device, e)| {
                    let e = Fields::read(doc, &e);
                    Some(Decision {
                        approve: e.bool("approve")?,
                        at: e.i64("at")?,
                        signature: e.str("signature")?,
                        device,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Approval {
        thread: thread.to_owned(),
        task: fields.str("task")?,
        action: fields.str("action").unwrap_or_default(),
        class: fields.str("class").unwrap_or_default(),
        requested_by: fields.str("requested_by").unwrap_or_default(),
        requested_at: fields.i64("requested_at").unwrap_or(0),
        expires_at: fields.i64("expires_at").unwrap_or(0),
        decisions,
        expired: fields.i64("expired_at").is_some() && written_by_creator(doc, obj, "expired_at"),
        id,
    })
}

/// The bytes a deciding device signs: everything the decision is about, so a signature cannot
/// be replayed onto another approval, task, action, expiry or space. The executor checks it
/// against the request as it issued it, kept in memory, not as the document now says.
pub fn approval_signed_bytes(space: &str, approval: &Approval, approve: bool, at: i64) -> Vec<u8> {
    let mut out = b"errand/approval/2".to_vec();
    for field in [
        space,
        &approval.thread,
        &approval.id,
        &approval.task,
        &approval.action,
        &approval.class,
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&approval.expires_at.to_be_bytes());
    out.push(u8::from(approve));
    out.extend_from_slice(&at.to_be_bytes());
    out
}

/// Whether a decision carries a valid signature by the device it names, over this very
/// approval in `space`. Whether that device may decide at all is a question for the
/// membership; see [`first_valid_decision`].
pub fn decision_is_signed(space: &str, approval: &Approval, decision: &Decision) -> bool {
    let Ok(device) = decision.device.parse::<crate::DeviceId>() else {
        return false;
    };
    let Some(bytes) = crate::ids::parse_hex::<64>(&decision.signature) else {
        return false;
    };
    let signature = iroh::Signature::from_bytes(&bytes);
    let message = approval_signed_bytes(space, approval, decision.approve, decision.at);
    device.verify(&message, &signature).is_ok()
}

/// The decision that counts on an approval: the earliest (by its time, then device) that is
/// validly signed by a device that `may_decide` (a member whose role may approve). A decision
/// anyone else wrote into the document, signed or not, is ignored: documents are writable by
/// every member, roles are not.
pub fn first_valid_decision<'a>(
    space: &str,
    approval: &'a Approval,
    may_decide: impl Fn(&crate::DeviceId) -> bool,
) -> Option<&'a Decision> {
    let mut decisions: Vec<&Decision> = approval.decisions.iter().collect();
    decisions.sort_by(|a, b| (a.at, &a.device).cmp(&(b.at, &b.device)));
    decisions.into_iter().find(|d| {
        decision_is_signed(space, approval, d)
            && d.device
                .parse::<crate::DeviceId>()
                .is_ok_and(|device| may_decide(&device))
    })
}
