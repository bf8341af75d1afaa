//! The errors apps see: one small flat enum whose messages are the node's one-line reasons.

use errand_node::NodeError;
use errand_pairing::protocol::JoinError;

/// Why a call failed. Every variant carries a message worded for people; the variant says
/// what kind of failure it is, so an app can react (for example, send the user to pairing on
/// `NotPaired`, or retry later on `Network`).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ErrandError {
    /// This device is not paired with any space yet: pair it with a ticket first.
    #[error("{0}")]
    NotPaired(String),
    /// No such task, thread, approval, device, document or artifact.
    #[error("{0}")]
    NotFound(String),
    /// The input cannot be used as given (empty text, a bad ticket, an ambiguous id, a task
    /// that already ended, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// This device's role does not allow it, or the other device refused.
    #[error("{0}")]
    NotAllowed(String),
    /// The other device could not be reached, or the exchange with it failed.
    #[error("{0}")]
    Network(String),
    /// The data directory or its database could not be used.
    #[error("{0}")]
    Storage(String),
    /// The node was closed; open a new one.
    #[error("{0}")]
    Closed(String),
    /// A bug: a call panicked, or something that should not fail did.
    #[error("{0}")]
    Internal(String),
}

impl From<NodeError> for ErrandError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::NoSpace => ErrandError::NotPaired(message),
            NodeError::NotFound(_) => ErrandError::NotFound(message),
            NodeError::AlreadyPaired(_)
            | NodeError::Ambiguous(_)
            | NodeError::BadInput(_)
            | NodeError::BadTicket(_)
            | NodeError::Join(JoinError::Expired) => ErrandError::InvalidInput(message),
            NodeError::NotAllowed(_) | NodeError::Join(JoinError::Refused(_)) => {
                ErrandError::NotAllowed(message)
            }
            NodeError::Bind(_)
            | NodeError::Join(_)
            | NodeError::Pairing(_)
            | NodeError::Blob(_) => ErrandError::Network(message),
            NodeError::Home(_)
            | NodeError::Identity(_)
            | NodeError::Open(_)
            | NodeError::Busy { .. }
            | NodeError::Store(_)
            | NodeError::Change(_)
            | NodeError::Load(_)
            | NodeError::IssueTicket(_) => ErrandError::Storage(message),
            // The control socket is not used here; anything else the node grows is reported
            // as it is worded.
            _ => ErrandError::Internal(message),
        }
    }
}

/// What a listener may report back. Whatever a listener throws (this or any other exception)
/// is logged and dropped on the Rust side: it never stops the events, nor crashes the app.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    #[error("listener failed: {reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ListenerError::Failed { reason: e.reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_keep_their_message_and_get_a_kind() {
        let e = ErrandError::from(NodeError::NoSpace);
        assert!(matches!(e, ErrandError::NotPaired(_)));
        assert!(e.to_string().contains("not paired"), "{e}");

        let e = ErrandError::from(NodeError::NotFound("no task \"zz\"".into()));
        assert!(matches!(e, ErrandError::NotFound(ref m) if m == "no task \"zz\""));

        let e = ErrandError::from(NodeError::Join(JoinError::Expired));
        assert!(matches!(e, ErrandError::InvalidInput(ref m) if m.contains("expired")));

        let e = ErrandError::from(NodeError::Join(JoinError::Unreachable("timed out".into())));
        assert!(matches!(e, ErrandError::Network(ref m) if m.contains("timed out")));

        let e = ErrandError::from(NodeError::Join(JoinError::Refused("no".into())));
        assert!(matches!(e, ErrandError::NotAllowed(_)));
    }
}
