//! Connectors (MCP servers) as the phone sees them: real servers installed by
//! `scripts/setup-tests` from the npm registry (`@modelcontextprotocol/server-filesystem`,
//! `@playwright/mcp` driving Debian's headless Chromium), and a small misbehaving server written
//! here, run by the desktop (`up --yes`) for tasks a separate phone process sends. A missing
//! server or browser fails the test with what to install; nothing is skipped.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;

use errand_tests::model_server::{Provider, ScriptServer, anthropic_message, anthropic_text};
use serde_json::{Value, json};

use crate::executor::{
    anthropic_tool_result, error_text, phone_approvals, progress_texts, send_task, setup_home,
    status, wait_final, wait_status, workspace, write_model_config,
};
use crate::support::{Home, array, path_str, str_field};

/// Where `scripts/setup-tests` installs the npm servers.
fn npm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/npm/node_modules")
}

/// An installed file the tests need, or a failure saying how to install it.
fn installed(path: PathBuf) -> String {
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-tests (it installs the MCP servers and chromium)",
        path.display()
    );
    path_str(&path.canonicalize().expect("resolve")).to_owned()
}

fn filesystem_server() -> String {
    installed(npm_dir().join("@modelcontextprotocol/server-filesystem/dist/index.js"))
}

fn node() -> &'static str {
    assert!(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "node is missing: run scripts/setup-tests"
    );
    "node"
}

/// A desktop home whose `connectors.toml` (the default path, HOME/connectors.toml) is `text`.
fn desk_with_connectors(text: &str) -> Home {
    let desk = Home::new("desk");
    fs::create_dir_all(desk.path()).expect("home");
    fs::write(desk.path().join("connectors.toml"), text).expect("write connectors.toml");
    desk
}

/// The filesystem server, confined to the desktop's workspace.
fn files_connector(desk: &Home, rules: &str) -> String {
    let ws = desk.path().join("workspace");
    fs::create_dir_all(&ws).expect("workspace");
    format!(
        "[files]\ncommand = \"{}\"\nargs = [\"{}\", \"{}\"]\n{rules}",
        node(),
        filesystem_server(),
        path_str(&ws.canonicalize().expect("resolve"))
    )
}

fn tool_names(body: &Value) -> Vec<String> {
    array(&body["tools"])
        .iter()
        .map(|t| str_field(t, "name"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The filesystem server.

#[test]
fn direct_mcp_calls_read_at_once_and_a_write_asks_the_phone_first() {
    let desk = Home::new("desk");
    let text = files_connector(&desk, "");
    fs::write(desk.path().join("connectors.toml"), text).expect("connectors.toml");
    let (p, _) = setup_home(desk, None, &[]);
    let ws = workspace(&p.desk);
    fs::write(ws.join("notes.txt"), "hello from the desktop").expect("notes");

    // read_text_file is marked read-only by the server: it runs without asking.
    let read = format!(
        "/mcp files read_text_file {}",
        json!({"path": ws.join("notes.txt")})
    );
    let (task, _) = send_task(&p.phone, &read, &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(done["result"], "hello from the desktop", "{done:#}");
    assert!(
        phone_approvals(&p.phone, &task).is_empty(),
        "a read is not asked about"
    );

    // write_file is not read-only: the phone is asked, with connector, tool and arguments.
    let target = ws.join("from-phone.txt");
    let write = format!(
        "/mcp files write_file {}",
        json!({"path": target, "content": "written through MCP"})
    );
    let (task, _) = send_task(&p.phone, &write, &[]);
    wait_status(&p.phone, &task, "waiting_approval");
    assert!(!target.exists(), "the write ran before approval");
    let requests = phone_approvals(&p.phone, &task);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let action = str_field(&requests[0], "action");
    assert_eq!(
        str_field(&requests[0], "class"),
        "connector",
        "{requests:#?}"
    );
    for part in [
        "files",
        "write_file",
        "from-phone.txt",
        "written through MCP",
    ] {
        assert!(
            action.contains(part),
            "the request shows {part:?}: {action}"
        );
    }
    p.phone
        .run(&["approve", &str_field(&requests[0], "id")])
        .success();
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(
        fs::read_to_string(&target).expect("the written file"),
        "written through MCP"
    );
}

#[test]
fn the_model_reads_through_a_connector_and_never_sees_a_denied_tool() {
    let desk = Home::new("desk");
    let text = files_connector(&desk, "[files.tools]\nmove_file = \"deny\"\n");
    fs::write(desk.path().join("connectors.toml"), text).expect("connectors.toml");
    let ws = desk.path().join("workspace").canonicalize().expect("ws");
    fs::write(ws.join("plan.txt"), "step 1: water the plants").expect("plan");
    let both = anthropic_message(
        json!([
            {"type": "tool_use", "id": "t_read", "name": "files__read_text_file",
             "input": {"path": ws.join("plan.txt")}},
            {"type": "tool_use", "id": "t_move", "name": "files__move_file",
             "input": {"source": ws.join("plan.txt"), "destination": ws.join("gone.txt")}},
        ]),
        "tool_use",
    );
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![both, anthropic_text("The plan says to water the plants.")],
    );
    write_model_config(&desk, &server, "anthropic");
    let (p, _) = setup_home(desk, None, &[("ERRAND_TEST_KEY", "test-key")]);
    let (task, _) = send_task(&p.phone, "what is my plan?", &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(
        done["result"], "The plan says to water the plants.",
        "{done:#}"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let offered = tool_names(&requests[0].body);
    assert!(
        offered.contains(&"files__read_text_file".to_owned()),
        "{offered:?}"
    );
    assert!(
        offered.contains(&"sh".to_owned()),
        "built-in tools stay: {offered:?}"
    );
    assert!(
        !offered.iter().any(|t| t == "files__move_file"),
        "a denied tool is offered: {offered:?}"
    );
    let read = anthropic_tool_result(&requests[1].body, "t_read");
    assert_ne!(read["is_error"], true, "{read:#}");
    assert!(
        read["content"]
            .to_string()
            .contains("step 1: water the plants"),
        "the file's text reaches the model: {read:#}"
    );
    let moved = anthropic_tool_result(&requests[1].body, "t_move");
    assert_eq!(moved["is_error"], true, "{moved:#}");
    assert!(
        moved["content"].to_string().contains("denied by policy"),
        "{moved:#}"
    );
    assert!(ws.join("plan.txt").exists() && !ws.join("gone.txt").exists());
    assert!(phone_approvals(&p.phone, &task).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The browser: Playwright's server driving headless Chromium, against a page on loopback.

/// Serves one HTML page on 127.0.0.1 to any number of requests, until the test ends.
fn serve_page(html: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
            });
        }
    });
    format!("http://{addr}/")
}

#[test]
fn the_model_opens_a_loopback_page_in_headless_chromium_and_reads_its_title() {
    let cli = installed(npm_dir().join("@playwright/mcp/cli.js"));
    let chromium = installed(PathBuf::from("/usr/bin/chromium"));
    let url = serve_page(
        "<!doctype html><html><head><title>Errand Harbour Report</title></head>\
         <body><h1>Tide tables</h1></body></html>",
    );
    let desk = desk_with_connectors(&format!(
        "[browser]\ncommand = \"{}\"\nargs = [\"{cli}\", \"--headless\", \"--isolated\", \
         \"--no-sandbox\", \"--browser\", \"chromium\", \"--executable-path\", \"{chromium}\"]\n\
         [browser.tools]\nbrowser_navigate = \"allow\"\n",
        node()
    ));
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![
            anthropic_message(
                json!([{"type": "tool_use", "id": "t_nav", "name": "browser__browser_navigate",
                        "input": {"url": url}}]),
                "tool_use",
            ),
            anthropic_text("The page is titled Errand Harbour Report."),
        ],
    );
    write_model_config(&desk, &server, "anthropic");
    let (p, _) = setup_home(desk, None, &[("ERRAND_TEST_KEY", "test-key")]);
    let (task, _) = send_task(&p.phone, "what is the title of my harbour page?", &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(
        done["result"], "The page is titled Errand Harbour Report.",
        "{done:#}"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let offered = tool_names(&requests[0].body);
    assert!(
        offered.contains(&"browser__browser_navigate".to_owned()),
        "{offered:?}"
    );
    for code in [
        "browser__browser_evaluate",
        "browser__browser_run_code_unsafe",
    ] {
        assert!(
            !offered.iter().any(|t| t == code),
            "{code} is offered: {offered:?}"
        );
    }
    let page = anthropic_tool_result(&requests[1].body, "t_nav");
    assert_ne!(page["is_error"], true, "{page:#}");
    assert!(
        page["content"]
            .to_string()
            .contains("Errand Harbour Report"),
        "the page's title reaches the model: {page:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: servers that will not start, crash, hang, answer garbage or too much.

/// A line-delimited JSON-RPC server that speaks just enough MCP, then misbehaves on purpose
/// according to the tool called.
const FLAKY_SERVER: &str = r#"
const readline = require('readline');
const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
const tool = (name) => ({name, inputSchema: {type: 'object'}, annotations: {readOnlyHint: true}});
readline.createInterface({input: process.stdin}).on('line', (line) => {
  let m;
  try { m = JSON.parse(line); } catch { return; }
  const reply = (result) => send({jsonrpc: '2.0', id: m.id, result});
  if (m.method === 'initialize') {
    reply({protocolVersion: m.params.protocolVersion, capabilities: {tools: {}},
           serverInfo: {name: 'flaky', version: '1'}});
  } else if (m.method === 'tools/list') {
    reply({tools: ['echo', 'crash', 'hang', 'garbage', 'huge', 'env'].map(tool)});
  } else if (m.method === 'tools/call') {
    const args = m.params.arguments || {};
    switch (m.params.name) {
      case 'echo': reply({content: [{type: 'text', text: 'echo: ' + args.text}]}); break;
      case 'crash': process.stderr.write('flaky: crashing on purpose\n'); process.exit(3);
      case 'hang': break;
      case 'garbage':
        process.stdout.write('this is not JSON-RPC\n');
        reply({content: 'not a list of parts'});
        break;
      case 'huge': reply({content: [{type: 'text', text: 'x'.repeat(3000000)}]}); break;
      case 'env':
        reply({content: [{type: 'text', text: Object.entries(process.env)
          .map(([k, v]) => k + '=' + v).join('\n')}]});
        break;
    }
  } else if (m.id !== undefined) {
    send({jsonrpc: '2.0', id: m.id, error: {code: -32601, message: 'no such method'}});
  }
});
"#;

#[test]
fn misbehaving_connectors_fail_their_call_with_one_line_and_nothing_else_stops() {
    let desk = Home::new("desk");
    let script = desk.file("flaky.js");
    fs::write(&script, FLAKY_SERVER).expect("script");
    let missing = desk.file("no-such-server");
    let text = format!(
        "[flaky]\ncommand = \"{}\"\nargs = [\"{}\"]\ntimeout_secs = 3\n\
         [missing]\ncommand = \"{}\"\n",
        node(),
        path_str(&script),
        path_str(&missing)
    );
    fs::create_dir_all(desk.path()).expect("home");
    fs::write(desk.path().join("connectors.toml"), text).expect("connectors.toml");
    let (p, _) = setup_home(desk, None, &[]);

    let run = |prompt: &str| {
        let (task, _) = send_task(&p.phone, prompt, &[]);
        wait_final(&p.phone, &task)
    };
    let fails_with = |prompt: &str, wanted: &[&str]| {
        let failed = run(prompt);
        assert_eq!(status(&failed), "failed", "{prompt}: {failed:#}");
        let error = error_text(&failed);
        assert!(
            !error.contains('\n'),
            "{prompt}: the reason is one line: {error:?}"
        );
        for part in wanted {
            assert!(error.contains(part), "{prompt}: {part:?} not in {error:?}");
        }
    };

    let echo = run("/mcp flaky echo {\"text\": \"one\"}");
    assert_eq!(echo["result"], "echo: one", "{echo:#}");
    fails_with(
        "/mcp flaky crash",
        &[
            "connector flaky stopped during the call",
            "crashing on purpose",
        ],
    );
    // It died; the next call starts it again.
    let echo = run("/mcp flaky echo {\"text\": \"two\"}");
    assert_eq!(echo["result"], "echo: two", "{echo:#}");
    fails_with(
        "/mcp flaky hang",
        &["connector flaky gave no valid answer within 3 s"],
    );
    fails_with(
        "/mcp flaky garbage",
        &["connector flaky answered something that is not a tool result"],
    );
    fails_with(
        "/mcp missing anything",
        &["connector missing did not start", "no-such-server"],
    );
    fails_with(
        "/mcp nowhere x",
        &["there is no connector \"nowhere\"", "flaky, missing"],
    );
    fails_with(
        "/mcp flaky nothing",
        &["connector flaky has no tool \"nothing\""],
    );

    // A huge answer is bounded: the document keeps the start, the artifact at most 1 MiB.
    let huge = run("/mcp flaky huge");
    assert_eq!(status(&huge), "done", "{:#}", huge["error"]);
    let shown = huge["result"].as_str().expect("result");
    assert!(
        shown.len() < 20_000,
        "{} bytes in the document",
        shown.len()
    );
    let artifacts = array(&huge["artifacts"]);
    assert_eq!(artifacts.len(), 1);
    assert!(artifacts[0]["size"].as_u64().expect("size") <= 1024 * 1024 + 100);

    // The executor and the server go on.
    let echo = run("/mcp flaky echo {\"text\": \"three\"}");
    assert_eq!(echo["result"], "echo: three", "{echo:#}");
    let listing = run("/ls");
    assert_eq!(status(&listing), "done", "{listing:#}");
    assert!(
        progress_texts(&listing)
            .iter()
            .any(|t| t.starts_with("running /ls")),
        "{listing:#}"
    );
}

/// A local server starts with what a shell command gets (the default variables and what the
/// policy passes on) plus its own `env` table: never the model's key or the agent socket.
#[test]
fn a_connector_server_gets_the_clean_environment_and_its_own_env_table() {
    let desk = Home::new("desk");
    let script = desk.file("flaky.js");
    fs::write(&script, FLAKY_SERVER).expect("script");
    let text = format!(
        "[flaky]\ncommand = \"{}\"\nargs = [\"{}\"]\nenv = {{ ERRAND_CONNECTOR_OWN = \"from-its-table\" }}\n",
        node(),
        path_str(&script),
    );
    fs::create_dir_all(desk.path()).expect("home");
    fs::write(desk.path().join("connectors.toml"), text).expect("connectors.toml");
    let (p, _) = setup_home(
        desk,
        Some("pass_env = [\"ERRAND_PASSED_ON\"]\n"),
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-not-for-connectors"),
            ("ERRAND_TEST_SECRET", "not-for-connectors"),
            ("SSH_AUTH_SOCK", "/tmp/agent-not-for-connectors"),
            ("ERRAND_PASSED_ON", "passed-on"),
        ],
    );
    let (task, _) = send_task(&p.phone, "/mcp flaky env", &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    let env = done["result"].as_str().expect("result");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(env.contains("ERRAND_PASSED_ON=passed-on"), "{env}");
    assert!(env.contains("ERRAND_CONNECTOR_OWN=from-its-table"), "{env}");
    for withheld in [
        "sk-ant-not-for-connectors",
        "ERRAND_TEST_SECRET",
        "SSH_AUTH_SOCK",
    ] {
        assert!(
            !env.contains(withheld),
            "{withheld} reached the server: {env}"
        );
    }
}

#[test]
fn a_connectors_file_that_does_not_parse_stops_the_executor() {
    let desk = Home::new("desk");
    let bad = desk.file("connectors.toml");
    fs::write(
        &bad,
        "[files]\ncommand = \"node\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
    )
    .expect("bad");
    let out = desk.run(&[
        "up",
        "--name",
        "desk",
        "--yes",
        "--connectors",
        path_str(&bad),
    ]);
    let reason = out.failure();
    assert!(
        reason.contains(&format!("connectors file {}, line 1", bad.display()))
            && reason.contains("not both"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// A remote connector: Playwright's server over streamable HTTP on loopback.

/// A server process of the test's own, in its own process group (so the browser it starts goes
/// with it), killed when the test ends.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn a_remote_connector_over_streamable_http_opens_a_page() {
    use std::os::unix::process::CommandExt;

    let cli = installed(npm_dir().join("@playwright/mcp/cli.js"));
    let chromium = installed(PathBuf::from("/usr/bin/chromium"));
    let page = serve_page(
        "<!doctype html><html><head><title>Errand Remote Lighthouse</title></head>\
         <body>Beam</body></html>",
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let host = format!("127.0.0.1:{port}");
    let _server = Group(
        std::process::Command::new(node())
            .args([cli.as_str(), "--port", &port, "--host", "127.0.0.1"])
            .args([
                "--allowed-hosts",
                &host,
                "--headless",
                "--isolated",
                "--no-sandbox",
            ])
            .args(["--browser", "chromium", "--executable-path", &chromium])
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the Playwright server"),
    );
    crate::support::wait_until(
        "the Playwright server to listen",
        std::time::Duration::from_secs(20),
        || std::net::TcpStream::connect(&host).ok(),
    );
    let desk = desk_with_connectors(&format!(
        "[web]\nurl = \"http://{host}/mcp\"\n[web.tools]\nbrowser_navigate = \"allow\"\n"
    ));
    let (p, _) = setup_home(desk, None, &[]);
    let (task, _) = send_task(
        &p.phone,
        &format!("/mcp web browser_navigate {}", json!({ "url": page })),
        &[],
    );
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    let result = done["result"].as_str().unwrap_or("");
    assert!(
        result.contains("Errand Remote Lighthouse"),
        "the page's title comes back: {done:#}"
    );
}
