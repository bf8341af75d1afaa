//! Model backends: the config file, the provider-neutral conversation, and the tools the model
//! is offered.
//!
//! The agent loop ([`crate::agent`]) speaks only the types here ([`Turn`], [`ModelReply`],
//! [`ToolSpec`]); each provider module translates them to its wire format. That keeps the loop
//! (and its tests) the same whether the model is Anthropic's API or a local Ollama server.
//!
//! The model never runs anything itself: a tool call only becomes an [`Action`] here, and the
//! runner checks that action against the policy exactly as it checks a direct command.

pub mod anthropic;
pub mod openai;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::action::Action;
use crate::agent::Limits;

/// A commented example of the model config file. It is parsed in a test, so it stays valid.
pub const EXAMPLE: &str = r#"# errand model config. Without a [model] table only direct commands (`/sh ...`,
# `/read ...`) can run; any other prompt needs a model.
[model]
# "anthropic" (the Messages API) or "openai" (any OpenAI-compatible chat completions endpoint:
# OpenAI, Ollama, llama.cpp's server, vLLM, ...).
provider = "anthropic"
model = "claude-sonnet-4-5"
# Optional; the default is https://api.anthropic.com for anthropic and https://api.openai.com/v1
# for openai. For a local Ollama: base_url = "http://127.0.0.1:11434/v1" (with provider = "openai").
base_url = "https://api.anthropic.com"
# The API key is read from this environment variable, never from this file. Optional for local
# endpoints; defaults to ANTHROPIC_API_KEY for anthropic and, when base_url is not set,
# OPENAI_API_KEY for openai.
api_key_env = "ANTHROPIC_API_KEY"
# Bounds on one task: model calls, wall-clock seconds, and tokens per model reply.
max_steps = 20
max_seconds = 600
max_tokens = 4096
"#;

/// How long one HTTP request to a model may take, from connecting to the last byte of the reply.
/// Long enough for a slow local model to write a full reply; the task's own `max_seconds` still
/// bounds the whole loop.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Which wire format the configured endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The Anthropic Messages API.
    Anthropic,
    /// OpenAI-compatible chat completions (OpenAI, Ollama, llama.cpp, ...).
    #[serde(rename = "openai")]
    OpenAi,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[model]` table of the config file. See [`EXAMPLE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: Provider,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the API key (the key itself never sits in
    /// a file that might be synced, shared or committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The most model calls one task may make.
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// The most wall-clock seconds one task may spend in the model loop (tools included).
    #[serde(default = "default_max_seconds")]
    pub max_seconds: u64,
    /// The most tokens the model may write in one reply.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_max_steps() -> usize {
    20
}

fn default_max_seconds() -> u64 {
    600
}

fn default_max_tokens() -> u32 {
    4096
}

/// Why the model config could not be loaded or turned into a backend.
#[derive(Debug, thiserror::Error)]
pub enum ModelConfigError {
    #[error("cannot read model config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "the {provider} model needs an API key: set the environment variable {var} \
         (named by api_key_env in the model config)"
    )]
    MissingApiKey { provider: Provider, var: String },
    #[error("invalid model base_url {url:?}: {message}")]
    BadBaseUrl { url: String, message: String },
    #[error("cannot set up the HTTP client for the model: {0}")]
    Client(String),
}

impl ModelConfig {
    /// Reads the `[model]` table of the config file at `path`.
    ///
    /// A missing file or a file without a `[model]` table is `Ok(None)`: running without a
    /// model is a normal set-up (direct commands still work). Other tables are left alone, so
    /// the same file can hold other sections; inside `[model]`, unknown keys are errors, so
    /// that a misspelt `max_step` does not silently fall back to the default.
    pub fn load(path: &Path) -> Result<Option<ModelConfig>, ModelConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ModelConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses config text; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Option<ModelConfig>, ModelConfigError> {
        let invalid = |message: String| ModelConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let Some(model) = table.remove("model") else {
            return Ok(None);
        };
        if !model.is_table() {
            return Err(invalid("`model` must be a table ([model])".to_string()));
        }
        let config: ModelConfig = model
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("[model]: {}", e.message())))?;
        config.validate().map_err(invalid)?;
        Ok(Some(config))
    }

    fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("[model]: `model` must not be empty".to_string());
        }
        if self.max_steps == 0 {
            return Err("[model]: `max_steps` must be at least 1".to_string());
        }
        if self.max_seconds == 0 {
            return Err("[model]: `max_seconds` must be at least 1".to_string());
        }
        if self.max_tokens == 0 {
            return Err("[model]: `max_tokens` must be at least 1".to_string());
        }
        if let Some(var) = &self.api_key_env
            && var.trim().is_empty()
        {
            return Err("[model]: `api_key_env` must name an environment variable".to_string());
        }
        Ok(())
    }

    /// The bounds of the agent loop for one task.
    pub fn limits(&self) -> Limits {
        Limits {
            max_steps: self.max_steps,
            max_time: Duration::from_secs(self.max_seconds),
        }
    }

    /// The base URL requests go to: the configured one, or the provider's public API.
    pub fn effective_base_url(&self) -> &str {
        match (&self.base_url, self.provider) {
            (Some(url), _) => url,
            (None, Provider::Anthropic) => anthropic::DEFAULT_BASE_URL,
            (None, Provider::OpenAi) => openai::DEFAULT_BASE_URL,
        }
    }

    /// The environment variable the key is read from, and whether the key is required.
    ///
    /// Anthropic always needs a key. For OpenAI-compatible endpoints a key is needed when one is
    /// named, or when no base_url is set (the public OpenAI API); a local Ollama or llama.cpp
    /// server with no `api_key_env` gets no `Authorization` header.
    pub fn api_key_var(&self) -> Option<&str> {
        match (&self.api_key_env, self.provider, &self.base_url) {
            (Some(var), _, _) => Some(var),
            (None, Provider::Anthropic, _) => Some("ANTHROPIC_API_KEY"),
            (None, Provider::OpenAi, None) => Some("OPENAI_API_KEY"),
            (None, Provider::OpenAi, Some(_)) => None,
        }
    }
}

/// Builds the backend the config describes, reading the API key from the process environment.
pub fn build_backend(config: &ModelConfig) -> Result<Box<dyn ModelBackend>, ModelConfigError> {
    build_backend_with_env(config, &|name| std::env::var(name).ok())
}

/// [`build_backend`] with the environment lookup passed in, so that callers and tests do not
/// have to change the process environment (which is unsafe with other threads running).
pub fn build_backend_with_env(
    config: &ModelConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn ModelBackend>, ModelConfigError> {
    let api_key = match config.api_key_var() {
        Some(var) => match env(var).filter(|key| !key.trim().is_empty()) {
            Some(key) => Some(key.trim().to_string()),
            None => {
                return Err(ModelConfigError::MissingApiKey {
                    provider: config.provider,
                    var: var.to_string(),
                });
            }
        },
        None => None,
    };
    let base_url = config.effective_base_url();
    let client = http_client(base_url)?;
    Ok(match config.provider {
        Provider::Anthropic => Box::new(anthropic::AnthropicBackend::with_client(
            client,
            base_url,
            api_key.unwrap_or_default(),
            &config.model,
            config.max_tokens,
        )),
        Provider::OpenAi => Box::new(openai::OpenAiBackend::with_client(
            client,
            base_url,
            api_key,
            &config.model,
            config.max_tokens,
        )),
    })
}

/// An HTTP client for one model endpoint.
///
/// The base URL is checked here so that a typo fails when the executor starts, not at the
/// first prompt. For a loopback endpoint (a local Ollama) proxies are bypassed: a desktop with
/// `HTTP_PROXY` set and no `NO_PROXY` would otherwise send local traffic to the proxy.
pub fn http_client(base_url: &str) -> Result<reqwest::Client, ModelConfigError> {
    let bad = |message: String| ModelConfigError::BadBaseUrl {
        url: base_url.to_string(),
        message,
    };
    let url = reqwest::Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("the scheme must be http or https".to_string()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad("the URL has no host".to_string()))?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    // Several executors may build clients; only the first install wins, and any installed
    // provider will do, so the result is deliberately ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(30));
    if loopback {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| ModelConfigError::Client(error_chain(&e)))
}

/// One turn of the conversation, independent of the provider.
#[derive(Clone, Debug, PartialEq)]
pub enum Turn {
    /// The person's prompt.
    User(String),
    /// What the model said, and the tools it asked for.
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The outcome of each tool call of the preceding assistant turn.
    ToolResults(Vec<ToolResult>),
}

/// A tool the model asked to use.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The provider's id for the call, echoed back with the result.
    pub id: String,
    pub name: String,
    /// The arguments. Normally a JSON object; a string holds arguments that were not valid
    /// JSON, kept so they can be echoed back to the model with the error.
    pub input: Value,
}

/// The outcome of one tool call, as the model will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    /// The call failed or was refused; the content says why.
    pub is_error: bool,
}

/// Why the model stopped writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It wants tool results before it goes on.
    ToolUse,
    /// It finished its answer.
    EndTurn,
    /// It ran into `max_tokens`.
    MaxTokens,
    /// Anything else the provider reported (kept for messages and logs).
    Other(String),
}

/// One reply of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop: StopReason,
}

/// A tool as offered to the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema for the tool's input object.
    pub input_schema: Value,
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the {provider} API answered HTTP {status}: {message}")]
    Status {
        provider: Provider,
        status: u16,
        message: String,
    },
    #[error("cannot reach the {provider} API at {url}: {detail}")]
    Network {
        provider: Provider,
        url: String,
        detail: String,
    },
    #[error("the {provider} API did not answer within {seconds} s")]
    Timeout { provider: Provider, seconds: u64 },
    #[error("cannot build the request to the {provider} API: {detail}")]
    Request { provider: Provider, detail: String },
    #[error("unexpected response from the {provider} API: {detail}")]
    BadResponse { provider: Provider, detail: String },
}

/// The future a backend returns: boxed so that [`ModelBackend`] can be used as a trait object.
pub type CompleteFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ModelReply, ModelError>> + Send + 'a>>;

/// A model that can continue a conversation, possibly asking for tools.
pub trait ModelBackend: Send + Sync + fmt::Debug {
    /// Sends the whole conversation and returns the model's next reply.
    fn complete<'a>(
        &'a self,
        system: &'a str,
        turns: &'a [Turn],
        tools: &'a [ToolSpec],
    ) -> CompleteFuture<'a>;
}

/// POSTs a JSON body and returns the JSON reply, turning every failure into a [`ModelError`]
/// that says what went wrong in words a person can act on.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    provider: Provider,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    timeout: Duration,
) -> Result<Value, ModelError> {
    let mut request = client.post(url).timeout(timeout).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            ModelError::Timeout {
                provider,
                seconds: timeout.as_secs().max(1),
            }
        } else if e.is_builder() {
            ModelError::Request {
                provider,
                detail: error_chain(&e.without_url()),
            }
        } else {
            ModelError::Network {
                provider,
                url: url.to_string(),
                detail: error_chain(&e.without_url()),
            }
        }
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let text = response.text().await.map_err(transport)?;
    if !status.is_success() {
        return Err(ModelError::Status {
            provider,
            status: status.as_u16(),
            message: api_error_message(&text),
        });
    }
    serde_json::from_str(&text).map_err(|e| ModelError::BadResponse {
        provider,
        detail: format!("the body is not JSON ({e}): {}", truncate(&text, 200)),
    })
}

/// The human-readable message of an API error body. Anthropic sends
/// `{"error": {"message": ...}}`, OpenAI the same, Ollama sometimes `{"error": "..."}`; anything
/// else is shown as (the start of) the raw body.
fn api_error_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        let found = value
            .pointer("/error/message")
            .or_else(|| value.get("error"))
            .or_else(|| value.get("message"))
            .and_then(Value::as_str);
        if let Some(message) = found {
            return message.to_string();
        }
    }
    let body = body.trim();
    if body.is_empty() {
        "(empty body)".to_string()
    } else {
        truncate(body, 300)
    }
}

/// An error and its sources on one line: reqwest's top-level message ("error sending request")
/// hides the useful part ("Connection refused") in its sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// At most `max` bytes of `text` (cut at a character boundary), marked when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} more bytes]", &text[..end], text.len() - end)
}

/// The tools offered to the model: one per [`Action`], with the same names and fields as the
/// direct commands, so a tool call and a `/sh` command are the same thing to the policy.
pub fn tool_specs() -> Vec<ToolSpec> {
    fn spec(name: &str, description: &str, fields: &[(&str, &str, &str)]) -> ToolSpec {
        let mut properties = Map::new();
        for (field, kind, about) in fields {
            properties.insert(
                (*field).to_string(),
                json!({ "type": kind, "description": about }),
            );
        }
        let required: Vec<&str> = fields.iter().map(|(field, _, _)| *field).collect();
        ToolSpec {
            name: name.to_string(),
            description: description.to_string(),
            input_schema: json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            }),
        }
    }
    vec![
        spec(
            "sh",
            "Run a shell command with `sh -c` in the workspace folder and return its exit \
             status, stdout and stderr. Subject to the user's policy; may need the user's approval.",
            &[("command", "string", "The command line to run.")],
        ),
        spec(
            "ls",
            "List the entries of a directory.",
            &[(
                "path",
                "string",
                "The directory, absolute or relative to the workspace.",
            )],
        ),
        spec(
            "read",
            "Read a text file and return its content.",
            &[(
                "path",
                "string",
                "The file, absolute or relative to the workspace.",
            )],
        ),
        spec(
            "write",
            "Write a text file, creating it or replacing its content. Overwriting may need the \
             user's approval.",
            &[
                (
                    "path",
                    "string",
                    "The file, absolute or relative to the workspace.",
                ),
                ("text", "string", "The complete new content of the file."),
            ],
        ),
        spec(
            "rm",
            "Delete a file or an empty directory. May need the user's approval.",
            &[("path", "string", "The file or empty directory to delete.")],
        ),
        spec(
            "fetch",
            "HTTP GET a URL and return the response body as text.",
            &[("url", "string", "An http or https URL.")],
        ),
        spec(
            "screenshot",
            "Capture the screen as a PNG; it is attached to the task's result for the user. \
             May need the user's approval.",
            &[],
        ),
        spec(
            "type",
            "Type text with the keyboard into the focused window. May need the user's approval.",
            &[("text", "string", "The text to type.")],
        ),
        spec(
            "key",
            "Press a key combination in the focused window. May need the user's approval.",
            &[(
                "combo",
                "string",
                "Keys joined with '+', such as `ctrl+c`, `alt+Tab` or `Return`.",
            )],
        ),
        spec(
            "click",
            "Click the left mouse button at screen coordinates (pixels from the top left). \
             May need the user's approval.",
            &[
                ("x", "integer", "Horizontal position in pixels."),
                ("y", "integer", "Vertical position in pixels."),
            ],
        ),
    ]
}

/// Turns a tool call into the [`Action`] the runner will check and run.
///
/// The error is a message for the model (sent back as an error tool result), so it says what
/// was wrong and what is expected: a model that misnames a field can correct itself.
pub fn action_from_call(call: &ToolCall) -> Result<Action, String> {
    let empty = Map::new();
    let input = match &call.input {
        Value::Object(map) => map,
        Value::Null => &empty,
        Value::String(raw) => {
            return Err(format!(
                "the arguments of `{}` are not valid JSON: {}",
                call.name,
                truncate(raw, 200)
            ));
        }
        other => {
            return Err(format!(
                "the arguments of `{}` must be a JSON object, not {other}",
                call.name
            ));
        }
    };
    let fields = Fields {
        tool: &call.name,
        input,
    };
    let action = match call.name.as_str() {
        "sh" => {
            fields.only(&["command"])?;
            Action::Sh {
                command: fields.string("command")?,
            }
        }
        "ls" => {
            fields.only(&["path"])?;
            Action::Ls {
                path: fields.string("path")?,
            }
        }
        "read" => {
            fields.only(&["path"])?;
            Action::Read {
                path: fields.string("path")?,
            }
        }
        "write" => {
            fields.only(&["path", "text"])?;
            Action::Write {
                path: fields.string("path")?,
                text: fields.string("text")?,
            }
        }
        "rm" => {
            fields.only(&["path"])?;
            Action::Rm {
                path: fields.string("path")?,
            }
        }
        "fetch" => {
            fields.only(&["url"])?;
            Action::Fetch {
                url: fields.string("url")?,
            }
        }
        "screenshot" => {
            fields.only(&[])?;
            Action::Screenshot
        }
        "type" => {
            fields.only(&["text"])?;
            Action::Type {
                text: fields.string("text")?,
            }
        }
        "key" => {
            fields.only(&["combo"])?;
            Action::Key {
                combo: fields.string("combo")?,
            }
        }
        "click" => {
            fields.only(&["x", "y"])?;
            Action::Click {
                x: fields.int("x")?,
                y: fields.int("y")?,
            }
        }
        // A connector's tool (`CONNECTOR__TOOL`): whether it exists and may run is decided by
        // the runner through `crate::connectors`, like a `/mcp` command.
        other
            if let Some((connector, tool)) =
                crate::connectors::config::split_model_tool_name(other) =>
        {
            Action::Mcp {
                connector: connector.to_owned(),
                name: tool.to_owned(),
                arguments: Value::Object(input.clone()),
            }
        }
        other => {
            let known: Vec<String> = tool_specs().into_iter().map(|spec| spec.name).collect();
            return Err(format!(
                "unknown tool `{}`; the tools are: {}",
                truncate(other, 100),
                known.join(", ")
            ));
        }
    };
    Ok(action)
}

/// The input object of one call, with error messages that name the tool.
struct Fields<'a> {
    tool: &'a str,
    input: &'a Map<String, Value>,
}

impl Fields<'_> {
    /// Rejects fields the tool does not have, rather than ignoring them: a model that sends
    /// `{"cmd": ...}` should hear that the field is `command`.
    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        for key in self.input.keys() {
            if !allowed.contains(&key.as_str()) {
                let expected = if allowed.is_empty() {
                    "it takes no arguments".to_string()
                } else {
                    format!("expected: {}", allowed.join(", "))
                };
                return Err(format!(
                    "`{}` has no argument `{}`; {expected}",
                    self.tool,
                    truncate(key, 100)
                ));
            }
        }
        Ok(())
    }

    fn string(&self, key: &str) -> Result<String, String> {
        match self.input.get(key) {
            Some(Value::String(value)) => Ok(value.clone()),
            Some(other) => Err(format!(
                "`{}`: argument `{key}` must be a string, not {}",
                self.tool,
                kind(other)
            )),
            None => Err(format!("`{}`: missing argument `{key}`", self.tool)),
        }
    }

    /// An integer coordinate. `100.0` is accepted, since some models write every number as a
    /// float; `100.5` and out-of-range values are not.
    fn int(&self, key: &str) -> Result<i32, String> {
        let value = self
            .input
            .get(key)
            .ok_or_else(|| format!("`{}`: missing argument `{key}`", self.tool))?;
        let whole = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        });
        whole.and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
            format!(
                "`{}`: argument `{key}` must be an integer, not {value}",
                self.tool
            )
        })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
