use super::*;

fn parse(text: &str) -> Result<Option<ModelConfig>, ModelConfigError> {
    ModelConfig::parse(text, Path::new("/home/me/errand/model.toml"))
}

#[test]
fn example_parses() {
    let config = parse(EXAMPLE)
        .expect("example parses")
        .expect("has [model]");
    assert_eq!(
        config,
        ModelConfig {
            provider: Provider::Anthropic,
            model: "claude-sonnet-4-5".to_string(),
            base_url: Some("https://api.anthropic.com".to_string()),
            api_key_env: Some("ANTHROPIC_API_KEY".to_string()),
            max_steps: 20,
            max_seconds: 600,
            max_tokens: 4096,
        }
    );
    assert_eq!(config.limits().max_steps, 20);
    assert_eq!(config.limits().max_time, Duration::from_secs(600));
}

#[test]
fn defaults_and_openai() {
    let config = parse("[model]\nprovider = \"openai\"\nmodel = \"llama3.2\"\n")
        .expect("parses")
        .expect("has [model]");
    assert_eq!(config.provider, Provider::OpenAi);
    assert_eq!(config.max_steps, 20);
    assert_eq!(config.max_seconds, 600);
    assert_eq!(config.max_tokens, 4096);
    assert_eq!(config.effective_base_url(), "https://api.openai.com/v1");
}

#[test]
fn absent_file_or_table_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        ModelConfig::load(&dir.path().join("missing.toml"))
            .expect("absent is fine")
            .is_none()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[policy]\nshell = \"ask\"\n").expect("write");
    assert!(
        ModelConfig::load(&path)
            .expect("no table is fine")
            .is_none()
    );
    std::fs::write(&path, EXAMPLE).expect("write");
    assert!(ModelConfig::load(&path).expect("loads").is_some());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let unknown_key = parse("[model]\nprovider = \"anthropic\"\nmodel = \"m\"\nmax_step = 3\n")
        .expect_err("unknown key");
    let text = unknown_key.to_string();
    assert!(text.contains("/home/me/errand/model.toml"), "{text}");
    assert!(text.contains("max_step"), "{text}");

    let provider =
        parse("[model]\nprovider = \"gemini\"\nmodel = \"m\"\n").expect_err("bad provider");
    let text = provider.to_string();
    assert!(
        text.contains("model.toml") && text.contains("gemini"),
        "{text}"
    );

    let syntax = parse("[model\nprovider = ").expect_err("bad toml");
    assert!(syntax.to_string().contains("model.toml"), "{syntax}");

    let zero = parse("[model]\nprovider = \"openai\"\nmodel = \"m\"\nmax_steps = 0\n")
        .expect_err("zero steps");
    assert!(zero.to_string().contains("max_steps"), "{zero}");
}

#[test]
fn missing_key_names_the_variable() {
    let config = parse(EXAMPLE).expect("parses").expect("has [model]");
    let error = build_backend_with_env(&config, &|_| None).expect_err("no key");
    assert!(matches!(error, ModelConfigError::MissingApiKey { .. }));
    assert!(error.to_string().contains("ANTHROPIC_API_KEY"), "{error}");

    // A blank variable is as good as none.
    let error =
        build_backend_with_env(&config, &|_| Some("  ".to_string())).expect_err("blank key");
    assert!(error.to_string().contains("ANTHROPIC_API_KEY"), "{error}");

    build_backend_with_env(&config, &|name| {
        (name == "ANTHROPIC_API_KEY").then(|| "sk-test".to_string())
    })
    .expect("key present");
}

#[test]
fn local_openai_endpoint_needs_no_key_but_a_named_one_must_exist() {
    let local = parse(
        "[model]\nprovider = \"openai\"\nmodel = \"llama3.2\"\n\
             base_url = \"http://127.0.0.1:11434/v1\"\n",
    )
    .expect("parses")
    .expect("has [model]");
    build_backend_with_env(&local, &|_| None).expect("no key needed");

    let public = parse("[model]\nprovider = \"openai\"\nmodel = \"gpt-4.1\"\n")
        .expect("parses")
        .expect("has [model]");
    let error = build_backend_with_env(&public, &|_| None).expect_err("key needed");
    assert!(error.to_string().contains("OPENAI_API_KEY"), "{error}");

    let named = ModelConfig {
        api_key_env: Some("MY_LOCAL_KEY".to_string()),
        ..local
    };
    let error = build_backend_with_env(&named, &|_| None).expect_err("named key missing");
    assert!(error.to_string().contains("MY_LOCAL_KEY"), "{error}");
}

#[test]
fn bad_base_url_is_refused() {
    let config = ModelConfig {
        base_url: Some("127.0.0.1:11434".to_string()),
        ..parse(EXAMPLE).expect("parses").expect("has [model]")
    };
    let error = build_backend_with_env(&config, &|_| Some("k".to_string())).expect_err("bad url");
    assert!(
        matches!(error, ModelConfigError::BadBaseUrl { .. }),
        "{error}"
    );
}

/// Every action, written as serde writes it (`{"tool": name, ...fields}`), must come back
/// from the matching tool call: this ties the tool names and schemas to [`Action`].
#[test]
fn every_action_round_trips_through_its_tool() {
    let actions = [
        Action::Sh {
            command: "ls -l".into(),
        },
        Action::Ls { path: ".".into() },
        Action::Read {
            path: "notes.txt".into(),
        },
        Action::Write {
            path: "out.txt".into(),
            text: "hello".into(),
        },
        Action::Rm {
            path: "old.txt".into(),
        },
        Action::Fetch {
            url: "https://example.com/".into(),
        },
        Action::Screenshot,
        Action::Type { text: "hi".into() },
        Action::Key {
            combo: "ctrl+c".into(),
        },
        Action::Click { x: 10, y: -3 },
    ];
    let specs = tool_specs();
    assert_eq!(specs.len(), actions.len());
    for action in actions {
        let mut input = serde_json::to_value(&action).expect("serialize");
        let map = input.as_object_mut().expect("object");
        let name = map
            .remove("tool")
            .and_then(|v| v.as_str().map(str::to_string))
            .expect("tool tag");
        let spec = specs
            .iter()
            .find(|spec| spec.name == name)
            .unwrap_or_else(|| panic!("no spec for {name}"));
        let properties = spec.input_schema["properties"]
            .as_object()
            .expect("properties");
        let mut schema_fields: Vec<&String> = properties.keys().collect();
        let mut action_fields: Vec<&String> = map.keys().collect();
        schema_fields.sort();
        action_fields.sort();
        assert_eq!(schema_fields, action_fields, "fields of {name}");
        let call = ToolCall {
            id: "c1".into(),
            name: name.clone(),
            input,
        };
        assert_eq!(action_from_call(&call), Ok(action), "{name}");
    }
}

#[test]
fn bad_calls_get_helpful_messages() {
    let call = |name: &str, input: Value| ToolCall {
        id: "c".into(),
        name: name.into(),
        input,
    };
    let error = action_from_call(&call("format_disk", json!({}))).expect_err("unknown");
    assert!(
        error.contains("unknown tool `format_disk`") && error.contains("sh"),
        "{error}"
    );
    let error = action_from_call(&call("sh", json!({"cmd": "ls"}))).expect_err("bad field");
    assert!(
        error.contains("`cmd`") && error.contains("command"),
        "{error}"
    );
    let error = action_from_call(&call("sh", json!({}))).expect_err("missing");
    assert!(error.contains("missing argument `command`"), "{error}");
    let error = action_from_call(&call("read", json!({"path": 3}))).expect_err("type");
    assert!(error.contains("must be a string"), "{error}");
    let error = action_from_call(&call("click", json!({"x": 1.5, "y": 2}))).expect_err("x");
    assert!(error.contains("must be an integer"), "{error}");
    let error = action_from_call(&call("sh", json!("{not json"))).expect_err("raw");
    assert!(error.contains("not valid JSON"), "{error}");
    assert_eq!(
        action_from_call(&call("click", json!({"x": 3.0, "y": 4}))),
        Ok(Action::Click { x: 3, y: 4 })
    );
    assert_eq!(
        action_from_call(&call("screenshot", Value::Null)),
        Ok(Action::Screenshot)
    );
}

#[test]
fn api_error_messages() {
    assert_eq!(
        api_error_message(
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
        ),
        "invalid x-api-key"
    );
    assert_eq!(
        api_error_message(r#"{"error":"model not found"}"#),
        "model not found"
    );
    assert_eq!(api_error_message("Bad Gateway"), "Bad Gateway");
    assert_eq!(api_error_message(""), "(empty body)");
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo", 2), "h... [5 more bytes]");
    assert_eq!(truncate("abc", 3), "abc");
}
