//! The desktop tools (screenshot, typing, keys, clicks) against real X servers.
//!
//! # One X server per test, and each test runs its checks in a child process
//!
//! xcap and enigo find the X server through the process-wide `DISPLAY` variable. Tests run in
//! parallel threads of one process, and changing the environment of a running process is
//! `unsafe` in edition 2024 (denied in this workspace) as well as racy, so no test touches its
//! own environment. Instead every test plays two roles, told apart by [`CHILD_ROLE`]:
//!
//! - **Parent** (the normal run): starts its own `Xvfb` on a display number nobody uses (see
//!   [`Xvfb::start`]), prepares the scene with ordinary X clients (`openbox`, `xterm`,
//!   `xdotool`, each given `DISPLAY` through [`Command::env`]), then runs the test binary
//!   again ([`std::env::current_exe`]) filtered with `--exact` to this very test, with
//!   `CHILD_ROLE` and `DISPLAY` set and `WAYLAND_DISPLAY`/`XDG_SESSION_TYPE` removed. Finally it
//!   checks what the child did from outside (the file an xterm wrote, the pointer position)
//!   and kills everything it started, X server last, in `Drop` guards, so a failing assertion
//!   leaves no process behind.
//! - **Child** (`CHILD_ROLE` set): calls the executor's tools in-process, asserts on their
//!   results, prints [`CHILD_DONE`] and returns. A child that panics fails its exit status; the
//!   marker guards against the opposite failure, a filter that matched no test (libtest then
//!   exits successfully having run nothing).
//!
//! Each test owning its X server means no test can see another's windows or keyboard focus,
//! so they need no lock and run in parallel. Readiness is polled against deadlines (the X
//! socket accepting a connection, the window manager answering `xdotool get_desktop`,
//! `xdotool search --sync` finding the window, the output file filling), never slept for a
//! guessed time, so the tests stay quick on an idle machine and tolerant on a loaded one.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use errand_executor::action::ToolOutput;
use errand_executor::tools::ToolError;
use errand_executor::tools::input::{click, key, type_text};
use errand_executor::tools::screen::screenshot;

/// Set in a child's environment to the role it plays; absent in the parent.
const CHILD_ROLE: &str = "ERRAND_DESKTOP_CHILD";
/// Printed by a child that ran its checks to the end.
const CHILD_DONE: &str = "errand-desktop-child-done";

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;

/// The role this process plays: `None` in the parent, the role the parent gave otherwise.
fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// The name libtest knows a test of this module by (`desktop::NAME`), for `--exact`.
fn test_path(name: &str) -> String {
    let module = module_path!();
    let module = module
        .split_once("::")
        .map_or(module, |(_crate, rest)| rest);
    format!("{module}::{name}")
}

/// Runs `future` on a small runtime: the tools are async and use the blocking pool.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// (a) A screenshot of an Xvfb with a white xterm on it: a full-size PNG of the real screen.
#[test]
fn screenshot_captures_the_x_screen() {
    if let Some(_role) = child_role() {
        let output = block_on(screenshot()).expect("screenshot");
        assert_eq!(output.text, format!("screenshot {WIDTH}x{HEIGHT}"));
        assert_eq!(output.blobs.len(), 1);
        let blob = &output.blobs[0];
        assert_eq!(
            (blob.name.as_str(), blob.mime.as_str()),
            ("screenshot.png", "image/png")
        );
        let image = decode_png(&blob.bytes);
        assert_eq!((image.width, image.height), (WIDTH, HEIGHT));
        let colours = image.distinct_colours();
        assert!(colours > 1, "the screenshot is blank: {colours} colour(s)");
        // Inside the xterm (placed at +10+10, no window manager to move it): white.
        assert_eq!(image.rgb(200, 100), [255, 255, 255]);
        println!("{CHILD_DONE} {colours} colours");
        return;
    }
    let x = Xvfb::start();
    let _xterm = x.spawn(
        "xterm",
        &[
            "-geometry",
            "80x24+10+10",
            "-bg",
            "white",
            "-fg",
            "black",
            "-e",
            "sleep",
            "600",
        ],
    );
    x.wait_for_window("xterm");
    x.run_child("screenshot_captures_the_x_screen", "screenshot", &[]);
}

/// (b) Typed text and key combinations reach the focused window: an xterm running `cat` into a
/// file, activated through a real window manager.
#[test]
fn typing_reaches_the_focused_xterm() {
    if let Some(_role) = child_role() {
        let typed = block_on(type_text("hello from errand")).expect("type_text");
        assert_eq!(typed.text, "typed 17 characters");
        let pressed = block_on(key("Return")).expect("key Return");
        assert_eq!(pressed.text, "pressed Return");
        // Characters that need shift or are missing from the layout's base level: enigo binds
        // them to spare keycodes, which must stay bound until the xterm has read the events.
        // The line break is typed as Return.
        block_on(type_text("Mixed Case ~#@!\n")).expect("type_text");
        // A modifier held around a key: shift+h is a capital H.
        block_on(key("shift+h")).expect("key shift+h");
        block_on(key("i")).expect("key i");
        block_on(key("Return")).expect("key Return");
        println!("{CHILD_DONE}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("typed.txt");
    let x = Xvfb::start();
    let _wm = x.start_window_manager();
    let out_arg = out.to_str().expect("utf-8 temp path");
    let _xterm = x.spawn(
        "xterm",
        &[
            "-geometry",
            "80x24+10+10",
            "-e",
            "sh",
            "-c",
            "exec cat > \"$0\"",
            out_arg,
        ],
    );
    let window = x.wait_for_window("xterm");
    x.activate(&window);
    x.run_child("typing_reaches_the_focused_xterm", "type", &[]);
    let expected = "hello from errand\nMixed Case ~#@!\nHi\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = std::fs::read_to_string(&out).unwrap_or_default();
        if seen == expected {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("the xterm wrote {seen:?}, expected {expected:?}");
}

/// (d) A click moves the pointer to the given position; positions off the screen are refused.
#[test]
fn click_moves_the_pointer() {
    if let Some(_role) = child_role() {
        let clicked = block_on(click(123, 456)).expect("click");
        assert_eq!(clicked.text, "clicked at 123,456");
        for (x, y) in [(5000, 10), (10, 768), (-1, 10)] {
            match block_on(click(x, y)) {
                Err(ToolError::Failed(message)) => {
                    assert!(message.contains("outside"), "{message}")
                }
                other => panic!("click({x}, {y}): expected Failed, got {other:?}"),
            }
        }
        println!("{CHILD_DONE}");
        return;
    }
    let x = Xvfb::start();
    x.run_child("click_moves_the_pointer", "click", &[]);
    let location = x.run(&["getmouselocation", "--shell"]);
    assert!(
        location.lines().any(|line| line == "X=123")
            && location.lines().any(|line| line == "Y=456"),
        "pointer not at 123,456: {location}"
    );
}

/// (c) With no display, or one that cannot be reached, every tool fails with
/// [`ToolError::NoDisplay`], and nothing panics.
#[test]
fn no_display_is_a_clear_error() {
    if let Some(role) = child_role() {
        let results: Vec<(&str, Result<ToolOutput, ToolError>)> = block_on(async {
            vec![
                ("screenshot", screenshot().await),
                ("type_text", type_text("x").await),
                ("key", key("Return").await),
                ("click", click(1, 1).await),
            ]
        });
        for (tool, result) in results {
            let wanted = match role.as_str() {
                "unset" => "DISPLAY is not set",
                "unreachable" => "cannot",
                // enigo talks X11 only and does not care about the session type.
                "leftover-wayland" if tool != "screenshot" => "cannot",
                "leftover-wayland" => "XDG_SESSION_TYPE",
                other => panic!("unknown role {other}"),
            };
            match result {
                Err(ToolError::NoDisplay(message)) => {
                    println!("{role} {tool}: {message}");
                    assert!(message.contains(wanted), "{role} {tool}: {message}");
                }
                other => panic!("{role} {tool}: expected NoDisplay, got {other:?}"),
            }
        }
        println!("{CHILD_DONE}");
        return;
    }
    // A display number with no server behind it: the same check Xvfb::start makes.
    let nobody = format!(":{}", free_display_number());
    let test = "no_display_is_a_clear_error";
    run_child(test, "unset", None, &[]);
    run_child(test, "unreachable", Some(&nobody), &[]);
    run_child(
        test,
        "leftover-wayland",
        Some(&nobody),
        &[("XDG_SESSION_TYPE", "wayland")],
    );
}

// ---------------------------------------------------------------------------------------------
// The X server and its clients.

/// An `Xvfb` this test started, killed (with its clients' help: they die with it) on drop.
struct Xvfb {
    child: Child,
    number: u32,
    log: File,
}

/// A client process, killed on drop.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn socket_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{number}"))
}

fn lock_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{number}-lock"))
}

/// The pid written in the display's lock file, if there is one.
fn lock_owner(number: u32) -> Option<u32> {
    std::fs::read_to_string(lock_path(number))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A display number with neither a lock file nor a socket. Starts at 90 plus an offset from
/// the process id and walks on with a process-wide counter, so parallel tests (and test
/// processes) rarely even try the same number; when two do, Xvfb's own lock file decides and
/// the loser exits, which [`Xvfb::start`] notices and retries.
fn free_display_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let number = 90 + (std::process::id().wrapping_mul(37).wrapping_add(step)) % 5000;
        if !socket_path(number).exists() && !lock_path(number).exists() {
            return number;
        }
    }
}

impl Xvfb {
    /// Starts `Xvfb :N -screen 0 1024x768x24 -noreset -nolisten tcp` on a free display and
    /// waits until it holds the display's lock and its socket accepts a connection. `-noreset` keeps the server from resetting
    /// (and dropping windows) whenever its last client disconnects.
    fn start() -> Xvfb {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempts = Vec::new();
        while Instant::now() < deadline {
            let number = free_display_number();
            let log = tempfile::tempfile().expect("log file");
            let mut child = Command::new("Xvfb")
                .arg(format!(":{number}"))
                .args(["-screen", "0", &format!("{WIDTH}x{HEIGHT}x24")])
                .args(["-noreset", "-nolisten", "tcp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("log file"))
                .spawn()
                .expect("starting Xvfb (is the xvfb package installed?)");
            loop {
                if let Some(status) = child.try_wait().expect("Xvfb status") {
                    // Most likely another server took this number first; try the next one.
                    attempts.push(format!(
                        ":{number} exited with {status}: {}",
                        read_all(&log)
                    ));
                    break;
                }
                // The lock file names the server's pid: checking it makes sure that the socket
                // answering is ours, not one another server opened on this number meanwhile.
                if lock_owner(number) == Some(child.id())
                    && UnixStream::connect(socket_path(number)).is_ok()
                {
                    return Xvfb { child, number, log };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "Xvfb :{number} did not start within 20 s: {}",
                        read_all(&log)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no Xvfb could start: {attempts:#?}");
    }

    fn display(&self) -> String {
        format!(":{}", self.number)
    }

    /// A command for an X client of this server: `DISPLAY` set, no Wayland hints.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("DISPLAY", self.display())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("XDG_SESSION_TYPE")
            .stdin(Stdio::null());
        command
    }

    /// Starts a long-running client (window manager, terminal).
    fn spawn(&self, program: &str, args: &[&str]) -> Spawned {
        let child = self
            .command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {program}: {error}"));
        Spawned(child)
    }

    /// Runs `xdotool ARGS` to completion (10 s at most) and returns its stdout; panics on
    /// failure.
    fn run(&self, args: &[&str]) -> String {
        let mut command = self.command("xdotool");
        command.args(args);
        let finished = run_with_deadline(command, Duration::from_secs(10));
        assert!(
            finished.succeeded(),
            "xdotool {args:?} failed: {finished:?}"
        );
        finished.stdout
    }

    /// Starts openbox and waits until it manages the screen. Clients must not map windows
    /// while a window manager is starting: an xterm started alongside openbox was, now and
    /// then, left unmapped for good. openbox sets `_NET_CURRENT_DESKTOP` once it has taken
    /// over, and `xdotool get_desktop` fails until then.
    fn start_window_manager(&self) -> Spawned {
        let wm = self.spawn("openbox", &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = self.command("xdotool");
            command.arg("get_desktop");
            let finished = run_with_deadline(command, Duration::from_secs(3));
            if finished.succeeded() {
                return wm;
            }
            assert!(
                Instant::now() < deadline,
                "openbox did not start within 10 s: {finished:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a window of class `class` is mapped and returns its id.
    fn wait_for_window(&self, class: &str) -> String {
        let found = self.run(&["search", "--sync", "--onlyvisible", "--class", class]);
        found
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no {class} window: {found:?}"))
            .to_owned()
    }

    /// Gives `window` the keyboard focus through the window manager, retrying until a deadline
    /// in case the window manager has not yet taken the new window in.
    fn activate(&self, window: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = self.command("xdotool");
            command.args(["windowactivate", "--sync", window]);
            let finished = run_with_deadline(command, Duration::from_secs(3));
            if finished.succeeded() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not activate window {window}: {finished:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs this test's child role against this X server.
    fn run_child(&self, test: &str, role: &str, env: &[(&str, &str)]) {
        run_child(test, role, Some(&self.display()), env);
    }
}

impl Drop for Xvfb {
    /// SIGTERM first, so that Xvfb removes its lock file and socket itself; SIGKILL (and
    /// removing them for it) if it does not exit promptly.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(socket_path(self.number));
        let _ = std::fs::remove_file(lock_path(self.number));
        eprintln!(
            "Xvfb :{} needed SIGKILL: {}",
            self.number,
            read_all(&self.log)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Runs the test binary again, filtered to `test` alone, as `role`, with `DISPLAY` set to
/// `display` (or removed), Wayland hints removed and `env` added; asserts that it succeeded
/// and reached its end.
fn run_child(test: &str, role: &str, display: Option<&str>, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([
            &test_path(test),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_SESSION_TYPE")
        .stdin(Stdio::null());
    if let Some(display) = display {
        command.env("DISPLAY", display);
    }
    command.envs(env.iter().copied());
    let finished = run_with_deadline(command, Duration::from_secs(30));
    assert!(
        finished.succeeded() && finished.stdout.contains(CHILD_DONE),
        "child {test} as {role} failed: {finished:?}"
    );
}

/// How a process run with [`run_with_deadline`] ended.
struct Finished {
    /// `None` when it was killed at the deadline.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Finished {
    /// Multi-line, so that a failing test shows the output as it was printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "{status}")?,
            None => writeln!(f, "killed at the deadline")?,
        }
        write!(f, "--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

impl Finished {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

/// Runs `command` until it exits or `timeout` passes (then kills it). Output goes to temporary
/// files rather than pipes, so a chatty process can never block on a full pipe.
fn run_with_deadline(mut command: Command, timeout: Duration) -> Finished {
    let stdout = tempfile::tempfile().expect("stdout file");
    let stderr = tempfile::tempfile().expect("stderr file");
    let mut child = command
        .stdout(stdout.try_clone().expect("stdout file"))
        .stderr(stderr.try_clone().expect("stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: read_all(&stdout),
        stderr: read_all(&stderr),
    }
}

fn read_all(file: &File) -> String {
    let mut file = file;
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text
}

// ---------------------------------------------------------------------------------------------
// PNG checks.

struct Decoded {
    width: u32,
    height: u32,
    /// RGB or RGBA rows, no padding.
    pixels: Vec<u8>,
    channels: usize,
}

fn decode_png(bytes: &[u8]) -> Decoded {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a valid PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut pixels).expect("PNG image data");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    pixels.truncate(info.buffer_size());
    Decoded {
        width: info.width,
        height: info.height,
        pixels,
        channels,
    }
}

impl Decoded {
    fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        let at = (y as usize * self.width as usize + x as usize) * self.channels;
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }

    fn distinct_colours(&self) -> usize {
        let mut colours: Vec<&[u8]> = self.pixels.chunks_exact(self.channels).collect();
        colours.sort_unstable();
        colours.dedup();
        colours.len()
    }
}
