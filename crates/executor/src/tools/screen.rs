//! The screenshot tool: the primary monitor as a PNG, via xcap.
//!
//! Also home to what the screen and input tools share ([`x11_display`], [`run_blocking`]):
//! both talk to the same X server, and both call third-party code that blocks.
//!
//! # How xcap 0.9.8 picks X11 or Wayland, and what we do about it
//!
//! On Linux xcap always enumerates monitors over X11 (libxcb, connecting to `$DISPLAY`, or
//! XWayland under a Wayland session). Only the pixels come from elsewhere: its
//! `wayland_detect()` reads the process environment at every call and returns true when
//! `XDG_SESSION_TYPE` is exactly `wayland` or `WAYLAND_DISPLAY` contains `wayland`; then the
//! capture goes over the D-Bus session bus (GNOME Shell's screenshot interface, else the
//! freedesktop screenshot portal) or wlroots screencopy, instead of an X11 `GetImage` on the
//! root window. There is no setting or API to choose: the environment is the only input.
//!
//! So when `DISPLAY` names an X server but `XDG_SESSION_TYPE=wayland` is left over with no
//! `WAYLAND_DISPLAY` (an Xvfb started from a terminal of a Wayland desktop, a service that
//! imported half a session's environment), xcap would ask some Wayland session for its
//! screen, cropped to the X server's geometry: the wrong pixels, or a D-Bus error.
//! Making xcap use X11 there would mean changing `XDG_SESSION_TYPE` in our own process, which
//! is `unsafe` (`std::env::set_var`, denied in this workspace) and racy for every other thread
//! reading the environment. We therefore refuse that combination with [`ToolError::NoDisplay`]
//! and a message saying which variable to drop before starting the executor. When
//! `WAYLAND_DISPLAY` is set we let xcap go the Wayland way: that is a real Wayland session.

use std::any::Any;
use std::ffi::OsStr;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use xcap::Monitor;
use xcap::image::RgbaImage;

use crate::action::{BlobOutput, ToolOutput};
use crate::tools::ToolError;

/// A capture is one X request and a PNG encode; if it takes this long the X server is wedged
/// (stopped, or a client holds a server grab). The task gets [`ToolError::TimedOut`] rather
/// than waiting forever; the blocked worker thread is left to finish or die with the server.
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Captures the primary monitor (the first one when none is marked primary) as a PNG.
///
/// Returns the text `screenshot WxH` and one blob, `screenshot.png`. With no usable display
/// (no `DISPLAY`, an X server that cannot be reached, see also the module docs) this is
/// [`ToolError::NoDisplay`]; it never panics.
pub async fn screenshot() -> Result<ToolOutput, ToolError> {
    check_capture_env(
        std::env::var_os("DISPLAY").as_deref(),
        std::env::var_os("WAYLAND_DISPLAY").as_deref(),
        std::env::var_os("XDG_SESSION_TYPE").as_deref(),
    )?;
    let (width, height, bytes) =
        run_blocking("screenshot", SCREENSHOT_TIMEOUT, capture_primary_png).await?;
    Ok(ToolOutput {
        text: format!("screenshot {width}x{height}"),
        blobs: vec![BlobOutput {
            name: "screenshot.png".into(),
            mime: "image/png".into(),
            bytes,
        }],
    })
}

/// Decides from the three environment variables whether xcap can capture the X server named
/// by `DISPLAY` (see the module docs for the rule xcap applies). A pure function of its inputs
/// so that it can be tested without touching the process environment.
fn check_capture_env(
    display: Option<&OsStr>,
    wayland_display: Option<&OsStr>,
    session_type: Option<&OsStr>,
) -> Result<(), ToolError> {
    let display = x11_display_from(display, "screenshots")?;
    let has_wayland_display = wayland_display.is_some_and(|value| !value.is_empty());
    let wayland_session = session_type.is_some_and(|value| value == "wayland");
    if wayland_session && !has_wayland_display {
        return Err(ToolError::NoDisplay(format!(
            "XDG_SESSION_TYPE=wayland but WAYLAND_DISPLAY is not set: the screenshot library \
             would ask a Wayland session for its screen instead of capturing the X server at \
             DISPLAY={display}; start the executor without XDG_SESSION_TYPE (or with the \
             session's WAYLAND_DISPLAY)"
        )));
    }
    Ok(())
}

/// The X11 display to use, or [`ToolError::NoDisplay`] when there is none. Both xcap (for the
/// monitor layout, even under Wayland) and enigo's x11rb backend need an X server, so both tools
/// check this first and fail with a message naming the variable rather than a library's
/// generic connection error.
pub(super) fn x11_display(purpose: &str) -> Result<String, ToolError> {
    x11_display_from(std::env::var_os("DISPLAY").as_deref(), purpose)
}

fn x11_display_from(display: Option<&OsStr>, purpose: &str) -> Result<String, ToolError> {
    match display.map(|value| value.to_string_lossy().into_owned()) {
        Some(display) if !display.is_empty() => Ok(display),
        _ => Err(ToolError::NoDisplay(format!(
            "DISPLAY is not set: {purpose} need an X11 display (an X server, or XWayland under \
             Wayland)"
        ))),
    }
}

/// Runs `work` on tokio's blocking pool: xcap and enigo make synchronous X11 round trips that
/// must not stall the async workers. A panic in that third-party code is caught and becomes
/// [`ToolError::Failed`], so one bad call cannot take the executor down, and a call that does
/// not finish within `timeout` becomes [`ToolError::TimedOut`].
///
/// `AssertUnwindSafe` is sound here: `work` owns everything it touches, and after a panic all
/// of it is dropped; nothing half-updated is observed again.
pub(super) async fn run_blocking<T, F>(
    what: &'static str,
    timeout: Duration,
    work: F,
) -> Result<T, ToolError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ToolError> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(move || {
        panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
            Err(ToolError::Failed(format!(
                "{what} failed: the desktop library panicked: {}",
                panic_message(payload.as_ref())
            )))
        })
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(ToolError::Failed(format!(
            "{what} failed: worker thread: {join_error}"
        ))),
        Err(_) => Err(ToolError::TimedOut(timeout.as_secs())),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}

/// The blocking part: find the monitor, capture it, encode it. Returns width, height and the
/// PNG bytes.
fn capture_primary_png() -> Result<(u32, u32, Vec<u8>), ToolError> {
    // Listing monitors is xcap's first contact with the X server and is nothing but X11
    // queries, so its failure means the display cannot be used at all.
    let monitors = Monitor::all().map_err(|error| {
        ToolError::NoDisplay(format!(
            "cannot connect to the X server at DISPLAY={}: {error}",
            std::env::var("DISPLAY").unwrap_or_default()
        ))
    })?;
    let monitor = monitors
        .iter()
        .find(|monitor| monitor.is_primary().unwrap_or(false))
        .or_else(|| monitors.first())
        .ok_or_else(|| ToolError::NoDisplay("the X server reports no monitors".into()))?;
    let image = monitor
        .capture_image()
        .map_err(|error| ToolError::Failed(format!("capturing the screen failed: {error}")))?;
    let bytes = encode_png(&image)?;
    Ok((image.width(), image.height(), bytes))
}

/// Encodes as an 8-bit PNG. X11 captures are always opaque, so the alpha channel is dropped
/// when every pixel has alpha 255: a quarter less data to send to the phone.
fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, ToolError> {
    let rgba = image.as_raw();
    let opaque = rgba.chunks_exact(4).all(|pixel| pixel[3] == u8::MAX);
    let (color, data) = if opaque {
        let rgb: Vec<u8> = rgba
            .chunks_exact(4)
            .flat_map(|pixel| [pixel[0], pixel[1], pixel[2]])
            .collect();
        (png::ColorType::Rgb, rgb)
    } else {
        (png::ColorType::Rgba, rgba.clone())
    };
    let failed = |error: png::EncodingError| ToolError::Failed(format!("encoding PNG: {error}"));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&data).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn check(
        display: Option<&str>,
        wayland: Option<&str>,
        session: Option<&str>,
    ) -> Result<(), ToolError> {
        check_capture_env(
            display.map(OsStr::new),
            wayland.map(OsStr::new),
            session.map(OsStr::new),
        )
    }

    #[test]
    fn plain_x11_is_accepted() {
        assert!(check(Some(":0"), None, None).is_ok());
        assert!(check(Some(":0"), None, Some("x11")).is_ok());
        assert!(check(Some(":0"), None, Some("tty")).is_ok());
    }

    #[test]
    fn missing_or_empty_display_is_no_display() {
        for display in [None, Some("")] {
            let error = check(display, None, None).unwrap_err();
            assert!(
                matches!(&error, ToolError::NoDisplay(message) if message.contains("DISPLAY")),
                "{error:?}"
            );
        }
        // Wayland without XWayland: xcap still needs X11 for the monitor layout.
        assert!(matches!(
            check(None, Some("wayland-0"), Some("wayland")),
            Err(ToolError::NoDisplay(_))
        ));
    }

    #[test]
    fn leftover_wayland_session_type_is_refused_with_advice() {
        let error = check(Some(":99"), None, Some("wayland")).unwrap_err();
        let ToolError::NoDisplay(message) = error else {
            panic!("expected NoDisplay, got {error:?}");
        };
        assert!(message.contains("XDG_SESSION_TYPE"), "{message}");
        assert!(message.contains(":99"), "{message}");
    }

    #[test]
    fn real_wayland_session_is_left_to_xcap() {
        assert!(check(Some(":0"), Some("wayland-0"), Some("wayland")).is_ok());
    }

    #[tokio::test]
    async fn panics_in_blocking_work_become_failed() {
        let result: Result<(), ToolError> =
            run_blocking("probe", Duration::from_secs(10), || panic!("boom")).await;
        assert!(
            matches!(&result, Err(ToolError::Failed(message)) if message.contains("boom")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn slow_blocking_work_times_out() {
        let result: Result<(), ToolError> =
            run_blocking("probe", Duration::from_millis(50), || {
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            })
            .await;
        assert!(matches!(result, Err(ToolError::TimedOut(_))), "{result:?}");
    }

    #[test]
    fn png_round_trips_and_drops_opaque_alpha() {
        let mut image = RgbaImage::new(3, 2);
        image.put_pixel(1, 1, xcap::image::Rgba([10, 20, 30, 255]));
        for pixel in image.pixels_mut() {
            pixel.0[3] = 255;
        }
        let bytes = encode_png(&image).unwrap();
        let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let row = info.line_size;
        assert_eq!(&buf[row + 3..row + 6], &[10, 20, 30]);
    }
}
