//! Approval requests as this device sees them, and its decisions on them.

use errand_sync::DeviceId;
use errand_sync::schema::{self, DocId, thread};

use super::{ApprovalInfo, Node, short};
use crate::error::NodeError;

impl Node {
    /// Approval requests in every thread, oldest first; with `pending_only`, only those still
    /// waiting for a decision.
    ///
    /// A decision counts only when validly signed by a member whose role may approve, as
    /// the executor judges it: anything else in the document is shown as if absent.
    ///
    /// Threads are read from their stored views where those are current, so a listing loads
    /// only the threads that changed since; and every thread held counts, listed in the index
    /// yet or not (a request can arrive before the index entry of its thread, and a phone
    /// told of it must find it).
    pub fn approvals(&self, pending_only: bool) -> Result<Vec<ApprovalInfo>, NodeError> {
        let names = self.names();
        self.require_space()?;
        let membership = self.membership();
        let mut out = Vec::new();
        let threads = self.all_threads()?;
        let each = self
            .repo
            .read_views(thread::APPROVALS_VIEW, &threads, |d, t| {
                thread::approvals(d, t.as_str())
            })?;
        for a in each.into_iter().flatten().flatten() {
            // Expiry is the asking desktop's to decide, by its clock.
            let now = a
                .requested_by
                .parse::<DeviceId>()
                .map_or_else(|_| schema::now_millis(), |d| self.clocks.now_at(&d));
            let first = crate::events::counted_decision(membership.as_deref(), &a).cloned();
            let first = first.as_ref();
            let state = crate::events::approval_state(&a, first, now);
            if pending_only && state != "pending" {
                continue;
            }
            let decided = matches!(state, "approved" | "denied");
            out.push(ApprovalInfo {
                decided_by: first.filter(|_| decided).map(|d| {
                    names
                        .get(&d.device)
                        .cloned()
                        .unwrap_or_else(|| short(&d.device).to_owned())
                }),
                state: state.to_owned(),
                id: a.id,
                thread: a.thread,
                task: a.task,
                action: a.action,
                class: a.class,
                requested_by: names
                    .get(&a.requested_by)
                    .cloned()
                    .unwrap_or(a.requested_by),
                requested_at: a.requested_at,
                expires_at: a.expires_at,
                expires_in_ms: a.expires_at.saturating_sub(now),
            });
        }
        out.sort_by_key(|a| a.requested_at);
        Ok(out)
    }

    /// Approves or denies a request, signed with this device's key. Returns the approval and
    /// the device that asked (to wait for delivery to it).
    pub fn decide(&self, needle: &str, approve: bool) -> Result<(ApprovalInfo, String), NodeError> {
        let space = self.require_space()?;
        let may = self.membership().is_some_and(|m| m.may_approve(&self.id()));
        if !may {
            return Err(NodeError::NotAllowed(
                "this device's role may not decide approvals".into(),
            ));
        }
        let needle = needle.trim();
        let all = self.approvals(false)?;
        let matches: Vec<&ApprovalInfo> = all
            .iter()
            .filter(|a| !needle.is_empty() && a.id.starts_with(needle))
            .collect();
        let info = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(NodeError::NotFound(format!(
                    "no approval request {needle:?}"
                )));
            }
            _ => {
                return Err(NodeError::Ambiguous(format!(
                    "{needle:?} names more than one approval request"
                )));
            }
        };
        if info.state != "pending" {
            return Err(NodeError::BadInput(format!(
                "approval {} is already {}",
                short(&info.id),
                info.state
            )));
        }
        let doc =
            DocId::parse(&info.thread).ok_or_else(|| NodeError::NotFound(info.thread.clone()))?;
        let approval = self
            .repo
            .read(&doc, |d| thread::approvals(d, doc.as_str()))?
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.id == info.id)
            .ok_or_else(|| NodeError::NotFound(info.id.clone()))?;
        let at = schema::now_millis();
        let message = thread::approval_signed_bytes(&space.to_string(), &approval, approve, at);
        let signature = self.secret_key.sign(&message);
        let decision = thread::Decision {
            device: self.id().to_string(),
            approve,
            at,
            signature: errand_sync::ids::hex(&signature.to_bytes()),
        };
        let verb = if approve { "approved" } else { "denied" };
        self.repo.change(
            &doc,
            &format!("approval {} {verb} by {}", short(&info.id), self.name()),
            |tx| thread::decide(tx, &info.id, &decision),
        )?;
        let requested_by = approval.requested_by.clone();
        let mut updated = info;
        updated.state = verb.to_owned();
        updated.decided_by = Some(self.name());
        Ok((updated, requested_by))
    }
}
