//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`): OpenAI itself, and
//! the local servers that copy its format (Ollama, llama.cpp, vLLM, LM Studio).
//!
//! Wire format, in short: `messages` with roles `system`, `user`, `assistant` and `tool`; the
//! assistant's `tool_calls` are `{id, type: "function", function: {name, arguments}}` where
//! `arguments` is a JSON *string*; each result goes back as `{role: "tool", tool_call_id,
//! content}`; tools are offered as `{type: "function", function: {name, description,
//! parameters}}`.
//!
//! The compatible servers differ in small ways, so the reply parser is lenient: `content` may
//! be null, a string or a list of text parts; `arguments` may be an object instead of a string
//! (Ollama) or not valid JSON; a call may lack its id.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    CompleteFuture, ModelBackend, ModelError, ModelReply, Provider, REQUEST_TIMEOUT, StopReason,
    ToolCall, ToolSpec, Turn, post_json,
};

/// Where requests go when the config names no base_url.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A model behind an OpenAI-compatible chat completions endpoint.
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
    max_tokens: u32,
    timeout: Duration,
}

impl fmt::Debug for OpenAiBackend {
    /// Leaves the API key out, so that logging the backend cannot leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("has_api_key", &self.api_key.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiBackend {
    /// A backend using `client` (see [`super::http_client`]); `base_url` is the part before
    /// `/chat/completions` (it includes `/v1`). Without a key no `Authorization` header is sent,
    /// which is what local servers expect.
    pub fn with_client(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        max_tokens: u32,
    ) -> Self {
        OpenAiBackend {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            model: model.to_string(),
            max_tokens,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Overrides the per-request timeout ([`REQUEST_TIMEOUT`] by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn complete_inner(
        &self,
        system: &str,
        turns: &[Turn],
        tools: &[ToolSpec],
    ) -> Result<ModelReply, ModelError> {
        let body = request_body(&self.model, self.max_tokens, system, turns, tools);
        let authorization = self.api_key.as_ref().map(|key| format!("Bearer {key}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(value) = &authorization {
            headers.push(("authorization", value.as_str()));
        }
        let reply = post_json(
            &self.client,
            Provider::OpenAi,
            &self.url,
            &headers,
            &body,
            self.timeout,
        )
        .await?;
        parse_reply(&reply)
    }
}

impl ModelBackend for OpenAiBackend {
    fn complete<'a>(
        &'a self,
        system: &'a str,
        turns: &'a [Turn],
        tools: &'a [ToolSpec],
    ) -> CompleteFuture<'a> {
        Box::pin(self.complete_inner(system, turns, tools))
    }
}

/// The JSON body of one chat completions request.
pub(crate) fn request_body(
    model: &str,
    max_tokens: u32,
    system: &str,
    turns: &[Turn],
    tools: &[ToolSpec],
) -> Value {
    let mut messages = Vec::with_capacity(turns.len() + 1);
    if !system.is_empty() {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for turn in turns {
        match turn {
            Turn::User(text) => messages.push(json!({ "role": "user", "content": text })),
            Turn::Assistant { text, tool_calls } => {
                // An empty string rather than null: every compatible server accepts a string,
                // not all of them accept null.
                let mut message = json!({ "role": "assistant", "content": text });
                if !tool_calls.is_empty() {
                    message["tool_calls"] = tool_calls
                        .iter()
                        .map(|call| {
                            // Arguments that were not valid JSON are echoed back as they came.
                            let arguments = match &call.input {
                                Value::String(raw) => raw.clone(),
                                Value::Null => "{}".to_string(),
                                other => other.to_string(),
                            };
                            json!({
                                "id": call.id,
                                "type": "function",
                                "function": { "name": call.name, "arguments": arguments },
                            })
                        })
                        .collect();
                }
                messages.push(message);
            }
            Turn::ToolResults(results) => {
                for result in results {
                    // The format has no error flag: say it in the content.
                    let content = if result.is_error {
                        format!("Error: {}", result.content)
                    } else {
                        result.content.clone()
                    };
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": result.call_id,
                        "content": content,
                    }));
                }
            }
        }
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
    });
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.input_schema,
                    },
                })
            })
            .collect();
    }
    body
}

/// Reads a chat completions reply (the first choice).
pub(crate) fn parse_reply(reply: &Value) -> Result<ModelReply, ModelError> {
    let bad = |detail: String| ModelError::BadResponse {
        provider: Provider::OpenAi,
        detail,
    };
    let choice = reply
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| bad("no `choices` in the reply".to_string()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| bad("the first choice has no `message`".to_string()))?;
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (index, call) in calls.iter().enumerate() {
            let function = call.get("function").unwrap_or(&Value::Null);
            let Some(name) = function.get("name").and_then(Value::as_str) else {
                return Err(bad(format!("a tool call without a function name: {call}")));
            };
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("call_{index}"), str::to_string);
            tool_calls.push(ToolCall {
                id,
                name: name.to_string(),
                input: parse_arguments(function.get("arguments")),
            });
        }
    }
    let stop = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("stop") => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_string()),
        None => StopReason::Other("none".to_string()),
    };
    Ok(ModelReply {
        text,
        tool_calls,
        stop,
    })
}

/// The arguments as a JSON value. A string that is not JSON stays a string, so that the loop
/// can answer the model with "not valid JSON" instead of failing the task; an empty string
/// means no arguments (some servers send that for tools without parameters).
fn parse_arguments(arguments: Option<&Value>) -> Value {
    match arguments {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(raw)) if raw.trim().is_empty() => json!({}),
        Some(Value::String(raw)) => {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()))
        }
        Some(other) => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use errand_tests::model_server::{self, Provider as ServerProvider, Reply, ScriptServer};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::action::Action;
    use crate::agent::{AgentError, Limits, ToolRunner, run_agent};
    use crate::model::{ModelConfig, build_backend_with_env, http_client, tool_specs};

    /// A runner that records what it is asked and answers with canned output.
    #[derive(Default)]
    struct Recorder {
        actions: Vec<Action>,
    }

    impl ToolRunner for Recorder {
        fn run<'a>(
            &'a mut self,
            action: Action,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
            Box::pin(async move {
                let out = match &action {
                    Action::Read { path } => format!("contents of {path}"),
                    other => format!("ran {other}"),
                };
                self.actions.push(action);
                Ok(out)
            })
        }

        fn ask_user<'a>(
            &'a mut self,
            question: String,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, AgentError>> + Send + 'a>>
        {
            Box::pin(async move { Ok(format!("answer to {question}")) })
        }
    }

    fn limits() -> Limits {
        Limits {
            max_steps: 5,
            max_time: Duration::from_secs(30),
        }
    }

    fn backend(server: &ScriptServer, key: Option<&str>) -> OpenAiBackend {
        let client = http_client(&server.base_url()).expect("client");
        OpenAiBackend::with_client(
            client,
            &server.base_url(),
            key.map(str::to_string),
            "llama-test",
            777,
        )
    }

    #[tokio::test]
    async fn tool_call_then_answer_over_the_wire() {
        let server = ScriptServer::start(
            ServerProvider::OpenAi,
            vec![
                model_server::openai_tool_call("call_1", "read", json!({"path": "notes.txt"})),
                model_server::openai_text("The notes say hello."),
            ],
        );
        let config = ModelConfig::parse(
            &format!(
                "[model]\nprovider = \"openai\"\nmodel = \"llama-test\"\n\
                 base_url = \"{}\"\napi_key_env = \"LOCAL_KEY\"\nmax_tokens = 777\n",
                server.base_url()
            ),
            std::path::Path::new("test.toml"),
        )
        .expect("parses")
        .expect("has [model]");
        let backend = build_backend_with_env(&config, &|name| {
            (name == "LOCAL_KEY").then(|| "sk-local".to_string())
        })
        .expect("backend");
        let mut runner = Recorder::default();
        let answer = run_agent(
            backend.as_ref(),
            vec![Turn::User("what do my notes say?".into())],
            &mut runner,
            limits(),
            CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .expect("answer");
        assert_eq!(answer, "The notes say hello.");
        assert_eq!(
            runner.actions,
            vec![Action::Read {
                path: "notes.txt".into()
            }]
        );

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for request in &requests {
            assert_eq!(request.path, "/v1/chat/completions");
            assert_eq!(request.header("authorization"), Some("Bearer sk-local"));
            assert_eq!(request.header("content-type"), Some("application/json"));
            assert_eq!(request.body["model"], "llama-test");
            assert_eq!(request.body["max_tokens"], 777);
            let tools = request.body["tools"].as_array().expect("tools");
            assert_eq!(
                tools.len(),
                tool_specs().len() + 1,
                "the actions and ask_user"
            );
            let read = tools
                .iter()
                .find(|t| t["function"]["name"] == "read")
                .expect("read tool");
            assert_eq!(read["type"], "function");
            assert_eq!(read["function"]["parameters"]["required"], json!(["path"]));
        }
        let messages = requests[1].body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"]
                .as_str()
                .is_some_and(|s| s.contains("policy"))
        );
        assert_eq!(
            messages[1],
            json!({"role": "user", "content": "what do my notes say?"})
        );
        assert_eq!(messages[2]["role"], "assistant");
        let call = &messages[2]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "read");
        // Arguments travel as a JSON string.
        let arguments: Value = serde_json::from_str(
            call["function"]["arguments"]
                .as_str()
                .expect("arguments string"),
        )
        .expect("valid JSON");
        assert_eq!(arguments, json!({"path": "notes.txt"}));
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "contents of notes.txt"})
        );
    }

    #[tokio::test]
    async fn no_key_means_no_authorization_header() {
        let server = ScriptServer::start(
            ServerProvider::OpenAi,
            vec![model_server::openai_text("hi")],
        );
        let reply = backend(&server, None)
            .complete("", &[Turn::User("hello".into())], &[])
            .await
            .expect("reply");
        assert_eq!(reply.text, "hi");
        assert_eq!(reply.stop, StopReason::EndTurn);
        let requests = server.requests();
        assert!(requests[0].header("authorization").is_none());
        // No system prompt, no tools: neither is sent.
        assert!(requests[0].body.get("tools").is_none());
        assert_eq!(
            requests[0].body["messages"],
            json!([{"role": "user", "content": "hello"}])
        );
    }

    #[tokio::test]
    async fn lenient_parsing_of_compatible_servers() {
        // Ollama-style: arguments as an object, no id, content null.
        let ollama = json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"function": {"name": "ls", "arguments": {"path": "."}}}]
        }}]});
        let reply = parse_reply(&ollama).expect("parses");
        assert_eq!(reply.text, "");
        assert_eq!(reply.tool_calls.len(), 1);
        assert_eq!(reply.tool_calls[0].id, "call_0");
        assert_eq!(reply.tool_calls[0].input, json!({"path": "."}));

        // Broken arguments stay a string; empty arguments mean none.
        let broken = json!({"choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "sh", "arguments": "{\"command\": "}},
                {"id": "b", "type": "function", "function": {"name": "screenshot", "arguments": ""}}
            ]
        }}]});
        let reply = parse_reply(&broken).expect("parses");
        assert_eq!(reply.stop, StopReason::ToolUse);
        assert_eq!(reply.tool_calls[0].input, json!("{\"command\": "));
        assert_eq!(reply.tool_calls[1].input, json!({}));

        // Echoed back verbatim, and the error flag becomes words.
        let turns = vec![
            Turn::Assistant {
                text: String::new(),
                tool_calls: reply.tool_calls.clone(),
            },
            Turn::ToolResults(vec![crate::model::ToolResult {
                call_id: "a".into(),
                content: "the arguments are not valid JSON".into(),
                is_error: true,
            }]),
        ];
        let body = request_body("m", 1, "", &turns, &[]);
        assert_eq!(
            body["messages"][0]["tool_calls"][0]["function"]["arguments"],
            "{\"command\": "
        );
        assert_eq!(
            body["messages"][1]["content"],
            "Error: the arguments are not valid JSON"
        );

        assert!(matches!(
            parse_reply(&json!({"choices": []})),
            Err(ModelError::BadResponse { .. })
        ));
    }

    #[tokio::test]
    async fn malformed_arguments_go_back_to_the_model() {
        let server = ScriptServer::start(
            ServerProvider::OpenAi,
            vec![
                model_server::openai_tool_call("c1", "sh", json!("{\"command\": ")),
                model_server::openai_text("Sorry about that."),
            ],
        );
        let backend = backend(&server, None);
        let mut runner = Recorder::default();
        let answer = run_agent(
            &backend,
            vec![Turn::User("do it".into())],
            &mut runner,
            limits(),
            CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .expect("answer");
        assert_eq!(answer, "Sorry about that.");
        assert!(runner.actions.is_empty());
        let messages = server.requests()[1].body["messages"].clone();
        let tool = &messages[3];
        assert_eq!(tool["role"], "tool");
        assert_eq!(tool["tool_call_id"], "c1");
        let content = tool["content"].as_str().expect("content");
        assert!(
            content.starts_with("Error:") && content.contains("not valid JSON"),
            "{content}"
        );
    }

    #[tokio::test]
    async fn unauthorized_is_a_clear_error() {
        let server = ScriptServer::start_replies(
            ServerProvider::OpenAi,
            vec![Reply::status(
                401,
                json!({"error": {"message": "Incorrect API key provided: sk-wrong.",
                    "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            )],
        );
        let backend = backend(&server, Some("sk-wrong"));
        let mut runner = Recorder::default();
        let error = run_agent(
            &backend,
            vec![Turn::User("hi".into())],
            &mut runner,
            limits(),
            CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .expect_err("401");
        let text = error.to_string();
        assert!(
            text.contains("401") && text.contains("Incorrect API key provided"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn exhausted_script_is_a_server_error() {
        let server = ScriptServer::start(ServerProvider::OpenAi, vec![]);
        let error = backend(&server, None)
            .complete("", &[Turn::User("hi".into())], &[])
            .await
            .expect_err("500");
        assert!(
            matches!(error, ModelError::Status { status: 500, .. }),
            "{error:?}"
        );
    }
}
