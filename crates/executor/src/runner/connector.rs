//! The runner's side of connectors: a connector call is checked against its connector's
//! rules (not the risk classes of the policy file), asked about through the same signed
//! approvals as every other action, and run under the task's cancel token.

use serde_json::Value;

use super::task::{Failure, TaskContext};
use crate::action::{Action, ToolOutput};
use crate::connectors::ConnectorError;
use crate::model::ToolSpec;
use crate::policy::Decision;
use crate::tools::ToolError;

impl From<ConnectorError> for ToolError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::Cancelled => ToolError::Cancelled,
            other => ToolError::Failed(other.to_string()),
        }
    }
}

fn failure(e: ConnectorError) -> Failure {
    match e {
        ConnectorError::Cancelled => Failure::cancelled(),
        other => Failure::new(other.to_string()),
    }
}

impl TaskContext {
    /// The connectors' tools for the model; a connector that cannot be reached is reported in
    /// the task's progress and left out, and the task goes on without it.
    pub(super) async fn connector_tools(&self) -> Result<Vec<ToolSpec>, Failure> {
        let connectors = self.shared.config.connectors.clone();
        if connectors.is_empty() {
            return Ok(Vec::new());
        }
        let (tools, problems) = tokio::select! {
            listed = connectors.model_tools() => listed,
            _ = self.cancel.cancelled() => return Err(Failure::cancelled()),
        };
        for problem in problems {
            self.progress(&problem);
        }
        Ok(tools)
    }

    /// Checks a connector call, asks when its rule says so, and runs it.
    pub(super) async fn perform_connector(
        &mut self,
        connector: String,
        tool: String,
        arguments: Value,
    ) -> Result<ToolOutput, Failure> {
        let connectors = self.shared.config.connectors.clone();
        let prepared = tokio::select! {
            p = connectors.prepare(&connector, &tool, &arguments) => p.map_err(failure)?,
            _ = self.cancel.cancelled() => return Err(Failure::cancelled()),
        };
        match prepared.decision {
            Decision::Allow => {}
            Decision::Deny => {
                return Err(Failure::new(format!(
                    "denied by policy: connectors.toml denies {connector} {tool}"
                )));
            }
            Decision::Ask => self.ask("connector", &prepared.description).await?,
        }
        if self.cancel.is_cancelled() {
            return Err(Failure::cancelled());
        }
        let action = Action::Mcp {
            connector,
            name: tool,
            arguments: Value::Object(prepared.arguments),
        };
        self.run_tool(action).await.map_err(|e| match e {
            ToolError::Cancelled => Failure::cancelled(),
            other => Failure::new(other.to_string()),
        })
    }
}
