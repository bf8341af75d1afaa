//! The node's error type: one flat enum whose messages are the one-line reasons the command
//! line prints.

use errand_pairing::protocol::{JoinError, TicketError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Home(String),
    #[error("device key: {0}")]
    Identity(#[from] errand_pairing::identity::IdentityError),
    #[error(transparent)]
    Open(errand_sync::store::OpenError),
    /// Another process has the home's database open (see [`crate::home`]).
    #[error(
        "another errand process is using this home ({database}): {holder}{}; talk to it, or stop it first",
        waited_text(*waited)
    )]
    Busy {
        database: String,
        /// Who holds it: `pid N, \`errand ...\``, as far as can be told.
        holder: String,
        /// How long this process waited for it, in seconds.
        waited: u64,
    },
    #[error(transparent)]
    Store(#[from] errand_sync::store::StoreError),
    #[error("cannot listen: {0}")]
    Bind(String),
    #[error(
        "this home is not paired with any space yet: run `errand up` on a desktop, or `errand join TICKET`"
    )]
    NoSpace,
    #[error("this home is already part of space {0}")]
    AlreadyPaired(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("bad ticket: {0}")]
    BadTicket(#[from] errand_pairing::ticket::TicketError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("pairing failed: {0}")]
    Pairing(String),
    #[error(transparent)]
    IssueTicket(#[from] TicketError),
    #[error(transparent)]
    Change(#[from] errand_sync::repo::ChangeError),
    #[error(transparent)]
    Load(#[from] errand_sync::repo::LoadError),
    /// An error reported by the running node, already worded for people.
    #[error("{0}")]
    Remote(String),
    #[error("cannot get the artifact: {0}")]
    Blob(String),
    #[error("control socket: {0}")]
    Control(String),
}

fn waited_text(waited: u64) -> String {
    if waited == 0 {
        String::new()
    } else {
        format!(", and it did not let go within {waited} s")
    }
}
