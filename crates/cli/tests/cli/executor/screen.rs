//! A screenshot taken on the desktop under a real Xvfb, saved on the phone.

use super::*;

const SCREEN_W: u32 = 800;
const SCREEN_H: u32 = 600;

/// An `Xvfb` this test started; killed on drop (after the clients, which are dropped first).
struct Xvfb {
    child: Child,
    number: u32,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the X server, killed on drop.
struct XClient(Child);

impl Drop for XClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn x_socket(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{number}"))
}

fn x_lock(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{number}-lock"))
}

/// A display number ≥ 150 with neither lock file nor socket; parallel starters that pick the
/// same one are told apart by Xvfb's lock file (the loser exits and [`Xvfb::start`] retries).
fn free_display() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let number = 150 + std::process::id().wrapping_mul(31).wrapping_add(step * 7) % 4000;
        if !x_socket(number).exists() && !x_lock(number).exists() {
            return number;
        }
    }
}

impl Xvfb {
    /// Starts `Xvfb :N -screen 0 800x600x24 -noreset -nolisten tcp` and waits until its lock
    /// file names it and its socket accepts a connection.
    fn start() -> Xvfb {
        let end = Instant::now() + Duration::from_secs(20);
        let mut attempts = Vec::new();
        while Instant::now() < end {
            let number = free_display();
            let mut log = tempfile::tempfile().expect("log file");
            let child = Command::new("Xvfb")
                .arg(format!(":{number}"))
                .args(["-screen", "0", &format!("{SCREEN_W}x{SCREEN_H}x24")])
                .args(["-noreset", "-nolisten", "tcp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("log file"))
                .spawn()
                .expect("start Xvfb (is the xvfb package installed?)");
            let mut x = Xvfb { child, number };
            loop {
                if let Some(status) = x.child.try_wait().expect("Xvfb status") {
                    let mut text = String::new();
                    let _ = std::io::Seek::rewind(&mut log);
                    let _ = log.read_to_string(&mut text);
                    attempts.push(format!(":{number} exited with {status}: {text}"));
                    break;
                }
                let owner = fs::read_to_string(x_lock(number))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if owner == Some(x.child.id()) && UnixStream::connect(x_socket(number)).is_ok() {
                    return x;
                }
                assert!(
                    Instant::now() < end,
                    "Xvfb :{number} did not start within 20 s"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no Xvfb could start: {attempts:#?}");
    }

    fn display(&self) -> String {
        format!(":{}", self.number)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", self.display())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("XDG_SESSION_TYPE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// A white xterm at +10+10, mapped on the screen before this returns.
    fn xterm(&self) -> XClient {
        let xterm = XClient(
            self.command("xterm")
                .args(["-geometry", "80x24+10+10", "-bg", "white", "-fg", "black"])
                .args(["-e", "sleep", "600"])
                .spawn()
                .expect("start xterm"),
        );
        // `xdotool search --sync` returns once the window is mapped.
        let mut search = XClient(
            self.command("xdotool")
                .args(["search", "--sync", "--onlyvisible", "--class", "xterm"])
                .spawn()
                .expect("start xdotool"),
        );
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = search.0.try_wait().expect("xdotool status") {
                assert!(status.success(), "xdotool search failed: {status}");
                return xterm;
            }
            assert!(
                Instant::now() < end,
                "the xterm window did not appear within 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Image {
    width: u32,
    height: u32,
    colours: usize,
}

fn decode_png(bytes: &[u8]) -> Image {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a valid PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut pixels).expect("PNG image data");
    pixels.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let mut colours: Vec<&[u8]> = pixels.chunks_exact(channels).collect();
    colours.sort_unstable();
    colours.dedup();
    Image {
        width: info.width,
        height: info.height,
        colours: colours.len(),
    }
}

#[test]
fn a_screenshot_taken_on_the_desktop_is_saved_on_the_phone() {
    let x = Xvfb::start();
    let _xterm = x.xterm();
    let display = x.display();
    let (p, _) = setup(
        Some("[actions]\nscreenshot = \"allow\"\n"),
        &[
            ("DISPLAY", &display),
            ("XDG_SESSION_TYPE", "x11"),
            ("WAYLAND_DISPLAY", ""),
        ],
    );
    let (task, _) = send_task(&p.phone, "/screenshot", &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    let artifacts = array(&done["artifacts"]);
    assert_eq!(artifacts.len(), 1, "{done:#}");
    assert_eq!(str_field(&artifacts[0], "mime"), "image/png", "{done:#}");

    let saved = p.phone.file("shot.png");
    p.phone
        .run(&["show", &task, "--save", path_str(&saved)])
        .success();
    let bytes = fs::read(&saved).expect("the saved screenshot");
    assert_eq!(
        bytes.len() as u64,
        artifacts[0]["size"].as_u64().expect("size"),
        "the saved file has the artifact's size"
    );
    let image = decode_png(&bytes);
    assert_eq!((image.width, image.height), (SCREEN_W, SCREEN_H));
    assert!(
        image.colours > 1,
        "the screenshot is blank: {} colour(s)",
        image.colours
    );
}
