//! Starting the desktop executor inside `errand up` / `errand serve`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use errand_executor::agent::Limits;
use errand_executor::connectors::{self, Connectors};
use errand_executor::model::{ModelConfig, build_backend};
use errand_executor::policy::Policy;
use errand_executor::runner::{self, Authority, ExecutorConfig, ExecutorHandle};
use errand_node::Node;
use errand_sync::{DeviceId, Role};

/// Approvals are decided by members whose role allows it, checked against the verified
/// membership at the moment of each decision.
#[derive(Debug)]
struct Members(Arc<Node>);

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

pub struct Paths {
    pub policy: PathBuf,
    pub model: PathBuf,
    pub connectors: PathBuf,
}

impl Paths {
    pub fn new(
        home: &Path,
        policy: Option<PathBuf>,
        model: Option<PathBuf>,
        connectors: Option<PathBuf>,
    ) -> Self {
        Paths {
            policy: policy.unwrap_or_else(|| home.join("policy.toml")),
            model: model.unwrap_or_else(|| home.join("model.toml")),
            connectors: connectors.unwrap_or_else(|| home.join("connectors.toml")),
        }
    }
}

/// Starts the executor if this device is a desktop. A policy, model or connectors file that
/// does not parse stops here with its error: the executor never runs on a guess.
pub fn start(node: &Arc<Node>, paths: &Paths) -> Result<Option<ExecutorHandle>> {
    if node.role() != Some(Role::Desktop) {
        return Ok(None);
    }
    let mut policy =
        Policy::load(&paths.policy, node.home()).context("cannot start the executor")?;
    let model_config = ModelConfig::load(&paths.model).context("cannot start the executor")?;
    // The model's configuration and key are errand's, never a tool's. The model endpoint
    // itself is not subject to `allow_private_network`: the user wrote it (a local Ollama is
    // on loopback), no document or web page can change it.
    policy.protect(&paths.model);
    policy.protect(&paths.connectors);
    for var in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
        .into_iter()
        .chain(model_config.as_ref().and_then(ModelConfig::api_key_var))
    {
        policy.withhold_env(var);
    }
    let connectors =
        connectors::config::load(&paths.connectors).context("cannot start the executor")?;
    let connectors = Arc::new(Connectors::new(
        connectors,
        policy.workspace().to_owned(),
        policy.child_env(),
    ));
    let (model, model_limits) = match &model_config {
        Some(config) => {
            let backend = build_backend(config).context("cannot start the executor")?;
            (Some(Arc::from(backend)), config.limits())
        }
        None => (
            None,
            Limits {
                max_steps: 20,
                max_time: Duration::from_secs(600),
            },
        ),
    };
    let config = ExecutorConfig {
        device: node.id(),
        policy,
        model,
        model_limits,
        model_hint: format!(
            "write {} with a [model] section (provider = \"anthropic\" or \"openai\", model, api_key_env), then restart the node",
            paths.model.display()
        ),
        max_parallel: 4,
        shell_timeout: Duration::from_secs(600),
        connectors,
    };
    Ok(Some(runner::start(
        node.repo().clone(),
        config,
        Arc::new(Members(node.clone())),
    )))
}
