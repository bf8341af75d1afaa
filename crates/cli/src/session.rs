//! How a command reaches the home's node: through the running node's control socket, or by
//! opening the home in this process when no node runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use errand_node::control::{self, Client, Request};
use errand_node::home::{self, HOME_WAIT, Reached};
use errand_node::{Node, NodeConfig, NodeEvent};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub enum Session {
    Remote(Client),
    Local(Arc<Node>),
}

/// A stream of node events, from either kind of session.
pub enum Events {
    Remote(Client),
    Local(broadcast::Receiver<NodeEvent>),
}

impl Events {
    pub async fn next(&mut self) -> Option<NodeEvent> {
        match self {
            Events::Remote(client) => loop {
                let line = client.next_line().await.ok()??;
                if let Ok(ev) = serde_json::from_str(&line) {
                    return Some(ev);
                }
            },
            Events::Local(rx) => loop {
                match rx.recv().await {
                    Ok(ev) => return Some(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

impl Session {
    /// Talks to the running node if there is one, else opens the home here; waits up to
    /// [`HOME_WAIT`] for a node that is starting or stopping, or another command, to let go.
    pub async fn open(config: &NodeConfig) -> Result<Session> {
        Ok(match home::reach(config, HOME_WAIT).await? {
            Reached::Running { client, .. } => Session::Remote(client),
            Reached::Here(node) => Session::Local(node),
        })
    }

    pub async fn call<T: DeserializeOwned>(&mut self, request: Request) -> Result<T> {
        let value = match self {
            Session::Remote(client) => client.call(&request).await?,
            Session::Local(node) => control::dispatch(node, request).await?,
        };
        serde_json::from_value(value).context("unexpected reply from the node")
    }

    /// Events from now on.
    pub async fn events(&self, home: &Path) -> Result<Events> {
        match self {
            Session::Remote(_) => {
                let mut client = Client::connect(home)
                    .await
                    .context("the running node went away")?;
                client.send(&Request::Watch).await?;
                Ok(Events::Remote(client))
            }
            Session::Local(node) => Ok(Events::Local(node.subscribe())),
        }
    }

    /// In a local session, gives peers a moment to bring this home up to date before a read.
    pub async fn refresh(&mut self, timeout: Duration) {
        if let Session::Local(node) = self
            && node.space().is_some()
        {
            let _ = node.sync_round(timeout).await;
        }
    }

    /// Closes connections cleanly so that peers notice at once.
    pub async fn close(self) {
        if let Session::Local(node) = self {
            node.shutdown().await;
        }
    }
}
