//! Direct commands: prompts such as `/sh ls -l` or `/read notes.txt` that map straight onto an
//! [`Action`] without a model. They exist so the executor is useful with no model configured,
//! and so a person can do one precise thing without the model's interpretation in between.
//!
//! Parsing is pure: it only checks the shape of the arguments. Whether the action is allowed
//! (paths, risk classes) is decided by [`crate::policy::Policy::check`], exactly as for the
//! model's tool calls.

use crate::action::Action;

/// A known command with arguments that do not fit it. The message is shown to the person who
/// sent the task, so it names the command and its expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A required argument is missing or has the wrong form.
    #[error("{command} needs {what}: {usage}")]
    Usage {
        command: &'static str,
        what: &'static str,
        usage: &'static str,
    },
    /// Arguments were given to a command that takes none.
    #[error("{command} takes no arguments")]
    NoArguments { command: &'static str },
    /// A path started with `"` but had no closing quote.
    #[error("{command}: the quoted path has no closing quote")]
    UnterminatedQuote { command: &'static str },
    /// The URL of `/fetch` is not an http or https URL.
    #[error("/fetch needs an http:// or https:// URL, not {0:?}")]
    NotHttp(String),
    /// The key combination of `/key` is empty or has an empty part.
    #[error("/key needs keys joined by +, such as ctrl+c or Return, not {0:?}")]
    BadCombo(String),
    /// The arguments of `/mcp` are not a JSON object.
    #[error("/mcp arguments must be a JSON object such as {{\"path\": \"a.txt\"}}: {0}")]
    BadJson(String),
}

/// Parses a prompt as a direct command.
///
/// Returns `None` when the prompt does not start with `/` and a known command word (leading
/// whitespace is ignored, the word is matched without regard to case): such a prompt goes to
/// the model. Returns `Some(Err(_))` for a known command whose arguments do not fit, so a typo
/// in the arguments is reported rather than handed to a model that may guess.
pub fn parse(prompt: &str) -> Option<Result<Action, CommandError>> {
    let prompt = prompt.trim_start();
    let body = prompt.strip_prefix('/')?;
    let word_end = body.find(char::is_whitespace).unwrap_or(body.len());
    let (word, rest) = body.split_at(word_end);
    let command = Command::from_word(word)?;
    Some(command.parse_args(rest))
}

/// The known command words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Sh,
    Ls,
    Read,
    Write,
    Rm,
    Fetch,
    Screenshot,
    Type,
    Key,
    Click,
    Mcp,
}

impl Command {
    fn from_word(word: &str) -> Option<Command> {
        let command = match word.to_ascii_lowercase().as_str() {
            "sh" => Command::Sh,
            "ls" => Command::Ls,
            "read" => Command::Read,
            "write" => Command::Write,
            "rm" => Command::Rm,
            "fetch" => Command::Fetch,
            "screenshot" => Command::Screenshot,
            "type" => Command::Type,
            "key" => Command::Key,
            "click" => Command::Click,
            "mcp" => Command::Mcp,
            _ => return None,
        };
        Some(command)
    }

    fn name(self) -> &'static str {
        match self {
            Command::Sh => "/sh",
            Command::Ls => "/ls",
            Command::Read => "/read",
            Command::Write => "/write",
            Command::Rm => "/rm",
            Command::Fetch => "/fetch",
            Command::Screenshot => "/screenshot",
            Command::Type => "/type",
            Command::Key => "/key",
            Command::Click => "/click",
            Command::Mcp => "/mcp",
        }
    }

    fn usage_error(self, what: &'static str, usage: &'static str) -> CommandError {
        CommandError::Usage {
            command: self.name(),
            what,
            usage,
        }
    }

    /// `rest` is everything after the command word, starting with the whitespace that
    /// separated it (or empty).
    fn parse_args(self, rest: &str) -> Result<Action, CommandError> {
        match self {
            Command::Sh => {
                let command = rest.trim();
                if command.is_empty() {
                    return Err(self.usage_error("a command", "/sh CMD"));
                }
                Ok(Action::Sh {
                    command: command.to_owned(),
                })
            }
            Command::Ls => {
                let path = if rest.trim().is_empty() {
                    ".".to_owned()
                } else {
                    self.single_path(rest, "a path", "/ls [PATH]")?
                };
                Ok(Action::Ls { path })
            }
            Command::Read => Ok(Action::Read {
                path: self.single_path(rest, "a path", "/read PATH")?,
            }),
            Command::Rm => Ok(Action::Rm {
                path: self.single_path(rest, "a path", "/rm PATH")?,
            }),
            Command::Write => {
                let (path, after) = self.first_path(rest)?;
                let Some(path) = path else {
                    return Err(self.usage_error("a path", "/write PATH TEXT"));
                };
                Ok(Action::Write {
                    path,
                    text: payload(after).to_owned(),
                })
            }
            Command::Fetch => {
                let url = rest.trim();
                if url.is_empty() {
                    return Err(self.usage_error("a URL", "/fetch URL"));
                }
                if !is_http_url(url) {
                    return Err(CommandError::NotHttp(url.to_owned()));
                }
                Ok(Action::Fetch {
                    url: url.to_owned(),
                })
            }
            Command::Screenshot => {
                if !rest.trim().is_empty() {
                    return Err(CommandError::NoArguments {
                        command: self.name(),
                    });
                }
                Ok(Action::Screenshot)
            }
            Command::Type => {
                let text = payload(rest);
                if text.is_empty() {
                    return Err(self.usage_error("some text", "/type TEXT"));
                }
                Ok(Action::Type {
                    text: text.to_owned(),
                })
            }
            Command::Key => {
                let combo = rest.trim();
                if combo.is_empty() {
                    return Err(self.usage_error("a key combination", "/key COMBO"));
                }
                if !is_valid_combo(combo) {
                    return Err(CommandError::BadCombo(combo.to_owned()));
                }
                Ok(Action::Key {
                    combo: combo.to_owned(),
                })
            }
            Command::Click => {
                let mut words = rest.split_whitespace();
                let x = words.next().and_then(|w| w.parse::<i32>().ok());
                let y = words.next().and_then(|w| w.parse::<i32>().ok());
                match (x, y, words.next()) {
                    (Some(x), Some(y), None) => Ok(Action::Click { x, y }),
                    _ => Err(self.usage_error("two integers", "/click X Y")),
                }
            }
            Command::Mcp => {
                let usage = || {
                    self.usage_error(
                        "a connector and a tool",
                        "/mcp CONNECTOR TOOL [JSON ARGUMENTS]",
                    )
                };
                let rest = rest.trim();
                let (connector, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let rest = rest.trim_start();
                let (tool, json) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if connector.is_empty() || tool.is_empty() {
                    return Err(usage());
                }
                let json = json.trim();
                let arguments = if json.is_empty() {
                    serde_json::Value::Object(serde_json::Map::new())
                } else {
                    match serde_json::from_str::<serde_json::Value>(json) {
                        Ok(value @ serde_json::Value::Object(_)) => value,
                        Ok(other) => return Err(CommandError::BadJson(format!("got {other}"))),
                        Err(e) => return Err(CommandError::BadJson(e.to_string())),
                    }
                };
                Ok(Action::Mcp {
                    connector: connector.to_owned(),
                    name: tool.to_owned(),
                    arguments,
                })
            }
        }
    }

    /// A command whose only argument is a path. An unquoted path is the whole rest of the
    /// line (trimmed), so `/read my notes.txt` reads `my notes.txt`; a quoted path must be the
    /// only thing there.
    fn single_path(
        self,
        rest: &str,
        what: &'static str,
        usage: &'static str,
    ) -> Result<String, CommandError> {
        let trimmed = rest.trim();
        if trimmed.starts_with('"') {
            let (path, after) = self.first_path(trimmed)?;
            match path {
                Some(path) if after.trim().is_empty() => Ok(path),
                _ => Err(self.usage_error(what, usage)),
            }
        } else if trimmed.is_empty() {
            Err(self.usage_error(what, usage))
        } else {
            Ok(trimmed.to_owned())
        }
    }

    /// Splits off the first path of `rest`: a double-quoted string (with `\"` and `\\`
    /// escapes) or the first whitespace-separated word. Returns the path (None if there is
    /// none, or the quotes are empty) and what follows it.
    fn first_path(self, rest: &str) -> Result<(Option<String>, &str), CommandError> {
        let rest = rest.trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut path = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        let after = &quoted[i + 1..];
                        return Ok(((!path.is_empty()).then_some(path), after));
                    }
                    '\\' => match chars.next() {
                        Some((_, escaped @ ('"' | '\\'))) => path.push(escaped),
                        Some((_, other)) => {
                            path.push('\\');
                            path.push(other);
                        }
                        None => path.push('\\'),
                    },
                    other => path.push(other),
                }
            }
            Err(CommandError::UnterminatedQuote {
                command: self.name(),
            })
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let (path, after) = rest.split_at(end);
            Ok(((!path.is_empty()).then(|| path.to_owned()), after))
        }
    }
}

/// The free text that follows a command's fixed arguments: spaces and tabs before it are
/// dropped, and so is one line break, so both `/write a.txt hello` and `/write a.txt` followed
/// by lines of text work; everything after that is kept verbatim (indentation, blank lines,
/// trailing newline).
fn payload(after: &str) -> &str {
    let text = after.trim_start_matches([' ', '\t']);
    text.strip_prefix("\r\n")
        .or_else(|| text.strip_prefix('\n'))
        .unwrap_or(text)
}

/// Whether `url` is an absolute http or https URL with something after the scheme. Used by
/// the policy too, so a model's fetch cannot reach `file://` or other schemes.
pub(crate) fn is_http_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !url.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Whether `combo` is one or more non-empty key names joined by `+` with no whitespace
/// (`ctrl+c`, `Return`, `alt+F4`). Which key names exist is up to the input tool.
pub(crate) fn is_valid_combo(combo: &str) -> bool {
    !combo.is_empty()
        && !combo.contains(char::is_whitespace)
        && combo.split('+').all(|part| !part.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(prompt: &str) -> Action {
        parse(prompt).unwrap().unwrap()
    }

    fn err(prompt: &str) -> String {
        parse(prompt).unwrap().unwrap_err().to_string()
    }

    #[test]
    fn not_a_command_goes_to_the_model() {
        assert_eq!(parse("summarise my notes"), None);
        assert_eq!(parse("what does /sh do?"), None);
        assert_eq!(parse("/shell ls"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/ ls"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn sh_takes_the_rest_verbatim() {
        assert_eq!(
            ok("/sh ls -l | grep 'a  b' && echo \"$HOME\""),
            Action::Sh {
                command: "ls -l | grep 'a  b' && echo \"$HOME\"".into()
            }
        );
        assert_eq!(
            ok("/sh\nfor i in 1 2; do\n  echo $i\ndone\n"),
            Action::Sh {
                command: "for i in 1 2; do\n  echo $i\ndone".into()
            }
        );
        assert_eq!(
            ok("  /SH echo hi"),
            Action::Sh {
                command: "echo hi".into()
            }
        );
        assert_eq!(err("/sh"), "/sh needs a command: /sh CMD");
        assert_eq!(err("/sh   \n "), "/sh needs a command: /sh CMD");
    }

    #[test]
    fn ls_defaults_to_the_workspace() {
        assert_eq!(ok("/ls"), Action::Ls { path: ".".into() });
        assert_eq!(ok("/ls   "), Action::Ls { path: ".".into() });
        assert_eq!(
            ok("/ls docs"),
            Action::Ls {
                path: "docs".into()
            }
        );
        assert_eq!(
            ok("/ls \"my docs\""),
            Action::Ls {
                path: "my docs".into()
            }
        );
    }

    #[test]
    fn read_and_rm_take_one_path() {
        assert_eq!(
            ok("/read notes.txt"),
            Action::Read {
                path: "notes.txt".into()
            }
        );
        assert_eq!(
            ok("/read my notes.txt "),
            Action::Read {
                path: "my notes.txt".into()
            }
        );
        assert_eq!(
            ok("/read \"a \\\"b\\\".txt\""),
            Action::Read {
                path: "a \"b\".txt".into()
            }
        );
        assert_eq!(err("/read"), "/read needs a path: /read PATH");
        assert_eq!(err("/read \"a\" b"), "/read needs a path: /read PATH");
        assert_eq!(
            err("/read \"a"),
            "/read: the quoted path has no closing quote"
        );
        assert_eq!(
            ok("/rm old.txt"),
            Action::Rm {
                path: "old.txt".into()
            }
        );
        assert_eq!(err("/rm "), "/rm needs a path: /rm PATH");
    }

    #[test]
    fn write_splits_path_and_text() {
        assert_eq!(
            ok("/write a.txt hello world"),
            Action::Write {
                path: "a.txt".into(),
                text: "hello world".into()
            }
        );
        assert_eq!(
            ok("/write a.py\n    indented\n\nlast\n"),
            Action::Write {
                path: "a.py".into(),
                text: "    indented\n\nlast\n".into()
            }
        );
        assert_eq!(
            ok("/write \"my file.txt\" line 1\nline 2"),
            Action::Write {
                path: "my file.txt".into(),
                text: "line 1\nline 2".into()
            }
        );
        assert_eq!(
            ok("/write empty.txt"),
            Action::Write {
                path: "empty.txt".into(),
                text: String::new()
            }
        );
        assert_eq!(err("/write"), "/write needs a path: /write PATH TEXT");
        assert_eq!(
            err("/write \"\" x"),
            "/write needs a path: /write PATH TEXT"
        );
        assert_eq!(
            err("/write \"a b x"),
            "/write: the quoted path has no closing quote"
        );
    }

    #[test]
    fn fetch_needs_http() {
        assert_eq!(
            ok("/fetch https://example.com/a?b=c"),
            Action::Fetch {
                url: "https://example.com/a?b=c".into()
            }
        );
        assert_eq!(
            ok("/fetch HTTP://127.0.0.1:8080"),
            Action::Fetch {
                url: "HTTP://127.0.0.1:8080".into()
            }
        );
        assert_eq!(err("/fetch"), "/fetch needs a URL: /fetch URL");
        assert_eq!(
            err("/fetch file:///etc/passwd"),
            "/fetch needs an http:// or https:// URL, not \"file:///etc/passwd\""
        );
        assert!(err("/fetch https://").contains("http://"));
        assert!(err("/fetch https://a b").contains("http://"));
    }

    #[test]
    fn screenshot_takes_nothing() {
        assert_eq!(ok("/screenshot"), Action::Screenshot);
        assert_eq!(ok("/screenshot \n"), Action::Screenshot);
        assert_eq!(err("/screenshot now"), "/screenshot takes no arguments");
    }

    #[test]
    fn type_keeps_the_text() {
        assert_eq!(
            ok("/type hello  world "),
            Action::Type {
                text: "hello  world ".into()
            }
        );
        assert_eq!(
            ok("/type\nline 1\nline 2"),
            Action::Type {
                text: "line 1\nline 2".into()
            }
        );
        assert_eq!(err("/type"), "/type needs some text: /type TEXT");
    }

    #[test]
    fn key_validates_the_combo() {
        for combo in ["ctrl+c", "Return", "alt+F4", "ctrl+shift+t", "+"] {
            if combo == "+" {
                assert!(parse(&format!("/key {combo}")).unwrap().is_err());
            } else {
                assert_eq!(
                    ok(&format!("/key {combo}")),
                    Action::Key {
                        combo: combo.into()
                    }
                );
            }
        }
        assert_eq!(err("/key"), "/key needs a key combination: /key COMBO");
        assert_eq!(
            err("/key ctrl+"),
            "/key needs keys joined by +, such as ctrl+c or Return, not \"ctrl+\""
        );
        assert!(err("/key ctrl++c").contains("joined by +"));
        assert!(err("/key ctrl c").contains("joined by +"));
    }

    #[test]
    fn mcp_takes_connector_tool_and_a_json_object() {
        assert_eq!(
            ok("/mcp files read_text_file {\"path\": \"/w/a b.txt\"}"),
            Action::Mcp {
                connector: "files".into(),
                name: "read_text_file".into(),
                arguments: serde_json::json!({"path": "/w/a b.txt"}),
            }
        );
        assert_eq!(
            ok("/MCP  files\tlist_allowed_directories  "),
            Action::Mcp {
                connector: "files".into(),
                name: "list_allowed_directories".into(),
                arguments: serde_json::json!({}),
            }
        );
        for bad in ["/mcp", "/mcp files", "/mcp   "] {
            assert_eq!(
                err(bad),
                "/mcp needs a connector and a tool: /mcp CONNECTOR TOOL [JSON ARGUMENTS]",
                "{bad}"
            );
        }
        assert!(err("/mcp files read {path}").starts_with("/mcp arguments must be a JSON object"));
        assert!(err("/mcp files read [1]").ends_with("got [1]"));
    }

    #[test]
    fn click_needs_two_integers() {
        assert_eq!(ok("/click 10 20"), Action::Click { x: 10, y: 20 });
        assert_eq!(ok("/click -5 7"), Action::Click { x: -5, y: 7 });
        for bad in [
            "/click",
            "/click 10",
            "/click a b",
            "/click 1 2 3",
            "/click 1.5 2",
        ] {
            assert_eq!(err(bad), "/click needs two integers: /click X Y", "{bad}");
        }
    }
}
