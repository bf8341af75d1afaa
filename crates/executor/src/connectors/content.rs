//! What crosses between MCP servers and the rest of the executor, as plain data: the tools a
//! server lists (as the model is offered them), and a tool's result (as a task's output).
//! Pure: the shell serialises the SDK's types to JSON and hands them here.

use serde_json::Value;

use crate::action::{BlobOutput, ToolOutput};
use crate::connectors::config::model_tool_name;
use crate::model::{ToolSpec, truncate};

/// The most text of one result kept (the model sees less still: the agent cuts each result
/// to its own bound, and the document keeps 16 KB with the rest in a blob).
pub const MAX_TEXT: usize = 1024 * 1024;
/// The most bytes of all images and other binary parts of one result together.
pub const MAX_BINARY: usize = 8 * 1024 * 1024;
/// The most of a tool's description offered to the model.
const MAX_DESCRIPTION: usize = 2048;
/// The most of a call's arguments shown in an approval request.
const MAX_SHOWN_ARGUMENTS: usize = 2048;

/// A tool a server lists, reduced to what errand uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    /// The server says the tool changes nothing (MCP's `readOnlyHint`).
    pub read_only: bool,
}

impl ToolInfo {
    /// Reads one entry of a `tools/list` answer. `None` for an entry without a name.
    pub fn from_json(tool: &Value) -> Option<ToolInfo> {
        let name = tool.get("name")?.as_str()?.to_owned();
        let description = tool
            .get("description")
            .and_then(Value::as_str)
            .or_else(|| tool.get("title").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        let input_schema = match tool.get("inputSchema") {
            Some(schema @ Value::Object(_)) => schema.clone(),
            _ => serde_json::json!({"type": "object"}),
        };
        let read_only = tool
            .pointer("/annotations/readOnlyHint")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Some(ToolInfo {
            name,
            description,
            input_schema,
            read_only,
        })
    }

    /// The tool as the model is offered it (`CONNECTOR__TOOL`), if its name fits the model
    /// APIs' rules.
    pub fn spec(&self, connector: &str) -> Option<ToolSpec> {
        let name = model_tool_name(connector, &self.name)?;
        let about = if self.description.trim().is_empty() {
            format!("The {} tool of the {connector} connector.", self.name)
        } else {
            truncate(self.description.trim(), MAX_DESCRIPTION)
        };
        Some(ToolSpec {
            name,
            description: format!("[connector {connector}] {about}"),
            input_schema: self.input_schema.clone(),
        })
    }
}

/// How a call is described to the person asked to approve it: connector, tool and arguments.
pub fn describe_call(connector: &str, tool: &str, arguments: &Value) -> String {
    let arguments = arguments.to_string();
    format!(
        "use connector {connector}: {tool} {}",
        truncate(&arguments, MAX_SHOWN_ARGUMENTS)
    )
}

/// Why a result cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The server reported the call as failed (`isError`); the text is its explanation.
    #[error("{0}")]
    ToolFailed(String),
}

/// Turns a `tools/call` result into a task's output: text parts joined (then bounded), images
/// and other binary parts as blobs (bounded together), structured content as JSON text when
/// there is no text.
pub fn output_from_result(
    connector: &str,
    tool: &str,
    result: &Value,
) -> Result<ToolOutput, ResultError> {
    let mut texts: Vec<String> = Vec::new();
    let mut blobs = Vec::new();
    let mut binary = 0usize;
    let empty = Vec::new();
    let parts = result
        .get("content")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" => texts.push(
                part.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            "image" | "audio" => {
                let mime = part
                    .get("mimeType")
                    .and_then(Value::as_str)
                    .unwrap_or("application/octet-stream");
                let data = part.get("data").and_then(Value::as_str).unwrap_or("");
                match decode_base64(data) {
                    Some(bytes) if binary + bytes.len() <= MAX_BINARY => {
                        binary += bytes.len();
                        let name = format!("{connector}-{tool}-{i}.{}", extension(mime));
                        texts.push(format!("[{kind} {name}, {mime}, {} bytes]", bytes.len()));
                        blobs.push(BlobOutput {
                            name,
                            mime: mime.to_owned(),
                            bytes,
                        });
                    }
                    Some(bytes) => texts.push(format!(
                        "[{kind}, {mime}, {} bytes: left out, over the {MAX_BINARY}-byte limit]",
                        bytes.len()
                    )),
                    None => texts.push(format!("[{kind}, {mime}: not valid base64, left out]")),
                }
            }
            "resource" => {
                let resource = part.get("resource").unwrap_or(&Value::Null);
                let uri = resource.get("uri").and_then(Value::as_str).unwrap_or("");
                match resource.get("text").and_then(Value::as_str) {
                    Some(text) => texts.push(format!("[resource {uri}]\n{text}")),
                    None => texts.push(format!("[binary resource {uri}, left out]")),
                }
            }
            "resource_link" => {
                let uri = part.get("uri").and_then(Value::as_str).unwrap_or("");
                texts.push(format!("[resource link {uri}]"));
            }
            other => texts.push(format!("[{} content, left out]", truncate(other, 40))),
        }
    }
    if texts.is_empty()
        && let Some(structured) = result.get("structuredContent")
    {
        texts.push(structured.to_string());
    }
    let text = truncate(&texts.join("\n"), MAX_TEXT);
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let reason = if text.trim().is_empty() {
            format!("{tool} failed without saying why")
        } else {
            text
        };
        return Err(ResultError::ToolFailed(reason));
    }
    Ok(ToolOutput { text, blobs })
}

fn extension(mime: &str) -> &str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "audio/wav" => "wav",
        "audio/mpeg" => "mp3",
        _ => "bin",
    }
}

/// Standard base64 (with or without padding); `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().as_bytes();
    data_encoding::BASE64
        .decode(text)
        .or_else(|_| data_encoding::BASE64_NOPAD.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tools_become_model_specs_with_their_mark() {
        let listed = json!({
            "name": "read_file", "description": "Read a file.",
            "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
            "annotations": {"readOnlyHint": true}
        });
        let tool = ToolInfo::from_json(&listed).expect("tool");
        assert!(tool.read_only);
        let spec = tool.spec("files").expect("spec");
        assert_eq!(spec.name, "files__read_file");
        assert!(
            spec.description.contains("Read a file."),
            "{}",
            spec.description
        );
        assert_eq!(spec.input_schema["properties"]["path"]["type"], "string");

        let bare = ToolInfo::from_json(&json!({"name": "w"})).expect("tool");
        assert!(!bare.read_only);
        assert_eq!(bare.input_schema, json!({"type": "object"}));
        assert!(ToolInfo::from_json(&json!({"description": "x"})).is_none());
    }

    #[test]
    fn results_keep_text_and_move_images_to_blobs() {
        let result = json!({"content": [
            {"type": "text", "text": "hello"},
            {"type": "image", "mimeType": "image/png", "data": "aGk="},
            {"type": "image", "mimeType": "image/png", "data": "not base64!"},
        ]});
        let out = output_from_result("b", "shot", &result).expect("ok");
        assert_eq!(out.blobs.len(), 1);
        assert_eq!(out.blobs[0].bytes, b"hi");
        assert_eq!(out.blobs[0].name, "b-shot-1.png");
        assert!(
            out.text
                .starts_with("hello\n[image b-shot-1.png, image/png, 2 bytes]"),
            "{}",
            out.text
        );
        assert!(out.text.contains("not valid base64"), "{}", out.text);
    }

    #[test]
    fn huge_text_is_bounded_and_errors_carry_the_reason() {
        let big = "x".repeat(MAX_TEXT * 3);
        let out = output_from_result(
            "c",
            "t",
            &json!({"content": [{"type": "text", "text": big}]}),
        )
        .expect("ok");
        assert!(out.text.len() < MAX_TEXT + 100);
        let failed = output_from_result(
            "c",
            "t",
            &json!({"content": [{"type": "text", "text": "no such file"}], "isError": true}),
        );
        assert_eq!(failed, Err(ResultError::ToolFailed("no such file".into())));
        let structured =
            output_from_result("c", "t", &json!({"structuredContent": {"a": 1}})).expect("ok");
        assert_eq!(structured.text, "{\"a\":1}");
    }

    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a*bc"), None);
    }

    #[test]
    fn approvals_show_connector_tool_and_arguments() {
        let args = json!({"path": "/w/a.txt", "content": "hi"});
        let shown = describe_call("files", "write_file", &args);
        assert_eq!(
            shown,
            "use connector files: write_file {\"content\":\"hi\",\"path\":\"/w/a.txt\"}"
        );
    }
}
