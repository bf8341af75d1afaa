//! The authors of changes, as the verified membership says: what the repo checks every
//! received change's author against.

use std::sync::Arc;

use errand_sync::{Authors, DeviceId, Standing};

use crate::trust::MembershipGate;

/// [`Authors`] over the membership gate: a current member by its role, a revoked device as a
/// former member, anyone else unknown.
#[derive(Debug, Clone)]
pub struct MembershipAuthors {
    gate: Arc<MembershipGate>,
}

impl MembershipAuthors {
    pub fn new(gate: Arc<MembershipGate>) -> Self {
        MembershipAuthors { gate }
    }
}

impl Authors for MembershipAuthors {
    fn standing(&self, device: &DeviceId) -> Standing {
        let Some(membership) = self.gate.membership() else {
            return Standing::Unknown;
        };
        if let Some(member) = membership.get(device) {
            Standing::Member(member.role)
        } else if membership.is_revoked(device) {
            Standing::Former
        } else {
            Standing::Unknown
        }
    }

    fn index_changed(&self, index: &automerge::Automerge) {
        self.gate.refresh_from(index);
    }
}
