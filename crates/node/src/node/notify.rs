//! Where this device wants to be told of events while its app is not running: the endpoints
//! it registers in the index (`errand notify`). The desktop that runs a task delivers them
//! (`errand_executor::notify`).

use errand_sync::schema::{DocId, index};

use super::Node;
use crate::error::NodeError;

/// The events an endpoint may ask for.
pub const NOTIFY_EVENTS: [&str; 5] = ["done", "failed", "approval", "question", "missed"];
/// The events an endpoint gets when it names none.
pub const DEFAULT_NOTIFY_EVENTS: [&str; 4] = ["done", "failed", "approval", "question"];

impl Node {
    /// Registers an endpoint (an `http://` or `https://` URL that takes a POSTed message) for
    /// `events` (all but `missed` when empty); `content` lets messages carry the prompt or
    /// result. Returns the registration.
    pub fn notify_add(
        &self,
        url: &str,
        events: &[String],
        content: bool,
    ) -> Result<index::NotifyEntry, NodeError> {
        self.require_space()?;
        let url = url.trim();
        let well_formed = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url.chars().any(char::is_whitespace)
            && url.len() <= 2048;
        if !well_formed {
            return Err(NodeError::BadInput(format!(
                "{url:?} is not an http:// or https:// URL"
            )));
        }
        let mut chosen: Vec<String> = Vec::new();
        for e in events.iter().flat_map(|e| e.split(',')).map(str::trim) {
            if e.is_empty() {
                continue;
            }
            if !NOTIFY_EVENTS.contains(&e) {
                return Err(NodeError::BadInput(format!(
                    "unknown event {e:?}: choose from {}",
                    NOTIFY_EVENTS.join(", ")
                )));
            }
            if !chosen.iter().any(|c| c == e) {
                chosen.push(e.to_owned());
            }
        }
        if chosen.is_empty() {
            chosen = DEFAULT_NOTIFY_EVENTS
                .iter()
                .map(|e| (*e).to_owned())
                .collect();
        }
        let entry = index::NotifyEntry {
            id: DocId::new_thread().as_str()[..12].to_owned(),
            device: self.id().to_string(),
            url: url.to_owned(),
            events: chosen,
            content,
        };
        self.repo
            .change(&DocId::index(), "notification endpoint added", |tx| {
                index::add_notify(tx, &entry)
            })
            .map_err(|e| match e {
                errand_sync::repo::ChangeError::Schema(_) => NodeError::NotAllowed(
                    "this space was created before notifications existed; create a new space to use them"
                        .into(),
                ),
                e => e.into(),
            })?;
        Ok(entry)
    }

    /// This device's endpoints.
    pub fn notify_list(&self) -> Result<Vec<index::NotifyEntry>, NodeError> {
        self.require_space()?;
        let me = self.id().to_string();
        let all = self
            .repo
            .read(&DocId::index(), index::notify_entries)?
            .unwrap_or_default();
        Ok(all.into_iter().filter(|e| e.device == me).collect())
    }

    /// Stops using one of this device's endpoints (by id or id prefix).
    pub fn notify_remove(&self, id: &str) -> Result<index::NotifyEntry, NodeError> {
        let mine = self.notify_list()?;
        let found: Vec<&index::NotifyEntry> = mine
            .iter()
            .filter(|e| e.id.starts_with(id.trim()))
            .collect();
        let entry = match found.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(NodeError::NotFound(format!("notification endpoint {id}"))),
            _ => {
                return Err(NodeError::Ambiguous(format!(
                    "{id} names more than one endpoint"
                )));
            }
        };
        let me = self.id().to_string();
        self.repo
            .change(&DocId::index(), "notification endpoint removed", |tx| {
                index::remove_notify(tx, &me, &entry.id).map(|_| ())
            })?;
        Ok(entry)
    }
}
