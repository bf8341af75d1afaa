//! The executor's authority over a node, as `errand up` wires it: who may send tasks and decide
//! approvals is read from the node's verified membership, never from a document.

use std::sync::Arc;

use errand_executor::runner::Authority;
use errand_node::Node;
use errand_sync::DeviceId;

#[derive(Debug)]
pub struct Members(pub Arc<Node>);

impl Authority for Members {
    fn may_send(&self, device: &DeviceId) -> bool {
        self.0.may_send(device)
    }
    fn may_approve(&self, device: &DeviceId) -> bool {
        self.0.may_approve(device)
    }
    fn name(&self, device: &DeviceId) -> Option<String> {
        self.0.device_name(device)
    }
}
