//! A local HTTP/1.1 server that speaks a model provider's wire format and plays a script.
//!
//! The AI model is the one part of errand that tests may replace (see DESIGN.md): the server
//! answers each POST with the next reply of its script, written as the provider's real JSON
//! (an Anthropic message with a `tool_use` block, an OpenAI chat completion with `tool_calls`),
//! so the executor's real HTTP client and real parsers are exercised. Every request is recorded
//! for assertions (headers, the tools offered, the tool results sent back).
//!
//! It listens on 127.0.0.1 only, one thread per connection (clients keep connections alive).
//! When the script runs out it answers 500 with an error body in the provider's format; a
//! request to the wrong path gets 404, so a client that builds its URL wrongly fails loudly.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Which provider's wire format the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// `POST /v1/messages`, base URL `http://127.0.0.1:PORT`.
    Anthropic,
    /// `POST /v1/chat/completions`, base URL `http://127.0.0.1:PORT/v1`.
    OpenAi,
}

impl Provider {
    /// The path the provider's client posts to.
    pub fn path(self) -> &'static str {
        match self {
            Provider::Anthropic => "/v1/messages",
            Provider::OpenAi => "/v1/chat/completions",
        }
    }

    /// An error body in the provider's format.
    pub fn error_body(self, message: &str) -> Value {
        match self {
            Provider::Anthropic => json!({
                "type": "error",
                "error": {"type": "api_error", "message": message},
            }),
            Provider::OpenAi => json!({
                "error": {"message": message, "type": "server_error", "param": null, "code": null},
            }),
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anthropic" => Ok(Provider::Anthropic),
            "openai" => Ok(Provider::OpenAi),
            other => Err(format!(
                "unknown provider {other:?}: expected anthropic or openai"
            )),
        }
    }
}

/// One scripted answer: an HTTP status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// A 200 with this body.
    pub fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    /// Any status, e.g. a 401 with the provider's error body.
    pub fn status(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }

    /// Reads one element of a script file: a reply body, or
    /// `{"http_status": 401, "body": {...}}` for a reply with another status.
    pub fn from_script_entry(entry: Value) -> Result<Reply, String> {
        if let Value::Object(map) = &entry
            && let Some(status) = map.get("http_status")
        {
            let status = status
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| format!("http_status must be an HTTP status code, not {status}"))?;
            let body = map.get("body").cloned().unwrap_or(Value::Null);
            return Ok(Reply { status, body });
        }
        Ok(Reply::ok(entry))
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case. (A repeated header keeps its last value.)
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, or a JSON string holding the raw text if it was not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The request as one JSON object (what `errand-model-script` prints).
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        })
    }
}

struct State {
    replies: VecDeque<Reply>,
    requests: Vec<RecordedRequest>,
}

struct Shared {
    provider: Provider,
    state: Mutex<State>,
    /// Signalled whenever a request is recorded.
    recorded: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// The state, even if a connection thread panicked while holding the lock: the data is
    /// plain lists, still consistent, and a test should report its own failure, not a poison.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The server. Stops accepting when dropped.
pub struct ScriptServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ScriptServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptServer")
            .field("addr", &self.addr)
            .field("provider", &self.shared.provider)
            .finish_non_exhaustive()
    }
}

/// How long a kept-alive connection may sit idle before its thread gives up on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest request body accepted (a long conversation is well under this).
const MAX_BODY: usize = 64 * 1024 * 1024;

impl ScriptServer {
    /// Starts a server whose script answers each POST, in order, with 200 and the next body.
    ///
    /// Panics if it cannot bind a loopback port: this is test support, and a test cannot go
    /// on without it.
    pub fn start(provider: Provider, replies: Vec<Value>) -> ScriptServer {
        Self::start_replies(provider, replies.into_iter().map(Reply::ok).collect())
    }

    /// Like [`ScriptServer::start`], with a status per reply (e.g. a 401).
    pub fn start_replies(provider: Provider, replies: Vec<Reply>) -> ScriptServer {
        match Self::try_start(provider, replies) {
            Ok(server) => server,
            Err(e) => panic!("cannot start the model script server on 127.0.0.1: {e}"),
        }
    }

    /// Starts the server, returning an error instead of panicking.
    pub fn try_start(provider: Provider, replies: Vec<Reply>) -> io::Result<ScriptServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            provider,
            state: Mutex::new(State {
                replies: replies.into(),
                requests: Vec::new(),
            }),
            recorded: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("model-script-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(ScriptServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The base URL to configure: `http://127.0.0.1:PORT` for Anthropic,
    /// `http://127.0.0.1:PORT/v1` for OpenAI-compatible clients.
    pub fn base_url(&self) -> String {
        match self.shared.provider {
            Provider::Anthropic => format!("http://{}", self.addr),
            Provider::OpenAi => format!("http://{}/v1", self.addr),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many scripted replies are left.
    pub fn remaining(&self) -> usize {
        self.shared.lock().replies.len()
    }

    /// Waits until at least `count` requests have arrived (or `timeout` passes) and returns
    /// them all; `None` on timeout. For tests where the client runs elsewhere (another task,
    /// another process) and there is nothing else to wait on.
    pub fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Option<Vec<RecordedRequest>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.requests.len() < count {
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .shared
                .recorded
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Some(state.requests.clone())
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("model-script-conn".into())
            .spawn(move || {
                // A broken connection only ends that connection; the client sees the error.
                let _ = serve_connection(stream, &shared);
            });
    }
}

/// Serves requests on one connection until the client closes it.
fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = answer(shared, request);
        write_reply(&mut writer, &reply, close)?;
        if close {
            return Ok(());
        }
    }
}

/// Records the request and picks its reply.
fn answer(shared: &Shared, request: RecordedRequest) -> Reply {
    let provider = shared.provider;
    let mut state = shared.lock();
    let reply = if request.method != "POST" {
        Reply::status(
            405,
            provider.error_body(&format!("{} is not supported here", request.method)),
        )
    } else if request.path != provider.path() {
        Reply::status(
            404,
            provider.error_body(&format!(
                "no such endpoint {}; the {provider:?} API is at {}",
                request.path,
                provider.path()
            )),
        )
    } else {
        let number = state.requests.len() + 1;
        state.replies.pop_front().unwrap_or_else(|| {
            Reply::status(
                500,
                provider.error_body(&format!(
                    "the model script has no reply left for request {number}"
                )),
            )
        })
    };
    state.requests.push(request);
    shared.recorded.notify_all();
    reply
}

/// Reads one request; `None` when the client closed the connection between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<RecordedRequest>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid(format!("bad request line {line:?}")));
    };
    let method = method.to_string();
    let path = target.split('?').next().unwrap_or(target).to_string();

    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed inside the headers".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }

    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let raw = if chunked {
        read_chunked(reader)?
    } else {
        let length = match headers.get("content-length") {
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| invalid(format!("bad content-length {v:?}")))?,
            None => 0,
        };
        if length > MAX_BODY {
            return Err(invalid(format!("body of {length} bytes is too large")));
        }
        let mut raw = vec![0; length];
        reader.read_exact(&mut raw)?;
        raw
    };
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
    };
    Ok(Some(RecordedRequest {
        method,
        path,
        headers,
        body,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body is too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn write_reply(writer: &mut TcpStream, reply: &Reply, close: bool) -> io::Result<()> {
    let body = reply.body.to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        reply.status,
        reason(reply.status),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    );
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// An Anthropic message that ends the turn with `text`.
pub fn anthropic_text(text: &str) -> Value {
    anthropic_message(json!([{ "type": "text", "text": text }]), "end_turn")
}

/// An Anthropic message that asks for one tool.
pub fn anthropic_tool_use(id: &str, name: &str, input: Value) -> Value {
    anthropic_message(
        json!([{ "type": "tool_use", "id": id, "name": name, "input": input }]),
        "tool_use",
    )
}

/// An Anthropic message with any content blocks and stop reason.
pub fn anthropic_message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_script",
        "type": "message",
        "role": "assistant",
        "model": "script",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": { "input_tokens": 1, "output_tokens": 1 },
    })
}

/// An OpenAI chat completion that answers with `text`.
pub fn openai_text(text: &str) -> Value {
    openai_completion(json!({ "role": "assistant", "content": text }), "stop")
}

/// An OpenAI chat completion that asks for one tool. `arguments` is the call's arguments: an
/// object is sent as its JSON text (as the API does); a string is sent as it is, so a test can
/// script arguments that are not valid JSON.
pub fn openai_tool_call(id: &str, name: &str, arguments: Value) -> Value {
    let arguments = match arguments {
        Value::String(raw) => raw,
        other => other.to_string(),
    };
    openai_completion(
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": arguments },
            }],
        }),
        "tool_calls",
    )
}

/// An OpenAI chat completion with any assistant message and finish reason.
pub fn openai_completion(message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-script",
        "object": "chat.completion",
        "created": 0,
        "model": "script",
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 },
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Sends one raw HTTP/1.1 request and returns the whole response text.
    fn raw_request(server: &ScriptServer, request: &str) -> String {
        let mut stream = TcpStream::connect(server.addr()).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    }

    #[test]
    fn plays_the_script_then_fails() {
        let server = ScriptServer::start(Provider::Anthropic, vec![anthropic_text("hi")]);
        let body = r#"{"model":"m"}"#;
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\nX-Api-Key: k\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let first = raw_request(&server, &request);
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        assert!(first.contains(r#""text":"hi""#), "{first}");
        let second = raw_request(&server, &request);
        assert!(second.starts_with("HTTP/1.1 500"), "{second}");
        assert!(second.contains("no reply left"), "{second}");

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/v1/messages");
        assert_eq!(requests[0].header("x-api-key"), Some("k"));
        assert_eq!(requests[0].body, json!({"model": "m"}));
    }

    #[test]
    fn wrong_path_and_chunked_bodies() {
        let server = ScriptServer::start(Provider::OpenAi, vec![openai_text("a")]);
        assert!(server.base_url().ends_with("/v1"));
        let wrong = raw_request(
            &server,
            "POST /chat/completions HTTP/1.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
        assert!(wrong.starts_with("HTTP/1.1 404"), "{wrong}");
        assert_eq!(server.remaining(), 1);

        let chunked = raw_request(
            &server,
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
        let requests = server
            .wait_for_requests(2, Duration::from_secs(5))
            .expect("two requests");
        assert_eq!(requests[1].body, json!({"a": 1}));
    }

    #[test]
    fn script_entries() {
        assert_eq!(
            Reply::from_script_entry(json!({"http_status": 401, "body": {"error": "no"}})),
            Ok(Reply::status(401, json!({"error": "no"})))
        );
        assert_eq!(
            Reply::from_script_entry(json!({"id": "x"})),
            Ok(Reply::ok(json!({"id": "x"})))
        );
        assert!(Reply::from_script_entry(json!({"http_status": 99})).is_err());
    }

    #[test]
    fn helpers_write_the_wire_format() {
        let call = openai_tool_call("c", "sh", json!({"command": "ls"}));
        let arguments = &call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"];
        assert_eq!(arguments, &json!("{\"command\":\"ls\"}"));
        let raw = openai_tool_call("c", "sh", json!("{broken"));
        assert_eq!(
            raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{broken"
        );
        let tool = anthropic_tool_use("t", "ls", json!({"path": "."}));
        assert_eq!(tool["stop_reason"], "tool_use");
        assert_eq!(tool["content"][0]["type"], "tool_use");
    }
}
