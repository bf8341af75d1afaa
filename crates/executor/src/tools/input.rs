//! The input tools: type text, press a key combination, click, via enigo's x11rb backend (XTest
//! fake input on the X server named by `DISPLAY`).
//!
//! # One connection per burst of calls
//!
//! enigo types a character missing from the keyboard layout (a capital letter, `~`, `é`) by
//! binding its keysym to a spare keycode and pressing that keycode; dropping the connection
//! unbinds them again. The receiving application translates a key event into a character only
//! when it gets round to it, with the keyboard mapping it fetches from the server *then*. If
//! the binding is already gone by that time the character is lost: under Xvfb an xterm
//! regularly lost the last few characters of `Hello ~#@` when the connection was dropped as
//! soon as the events were sent.
//!
//! So a connection is kept after a call, and the calls of a burst (a model typing a line and
//! pressing Return, say) share it: its bindings stay in place while they are used. A call more
//! than [`REUSE_WITHIN`] after the previous one drops the old connection, long after its
//! events were delivered, and opens a fresh one, which also picks up a keyboard layout the
//! user switched in the meantime (enigo reads the layout only when connecting). The last
//! connection lives until the process ends; the X server then keeps its few extra bindings on
//! keycodes no physical key sends, which is harmless.
//!
//! The same lock serialises input: two tasks typing at once would interleave their keystrokes
//! into one window. Held modifiers are always released before a call returns.
//!
//! enigo's libei (Wayland portal) backends are not enabled: they panic with no session bus.
//! Under Wayland, input therefore reaches XWayland windows only.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use enigo::{Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};

use crate::action::ToolOutput;
use crate::tools::ToolError;
use crate::tools::screen::{run_blocking, x11_display};

/// Connecting and one key or click take milliseconds; a call that takes this long has a wedged
/// X server. Typing gets [`PER_CHAR_TIMEOUT`] more per character on top.
const BASE_TIMEOUT: Duration = Duration::from_secs(30);
const PER_CHAR_TIMEOUT: Duration = Duration::from_millis(50);

/// How long after a call its connection is reused (see the module docs).
const REUSE_WITHIN: Duration = Duration::from_secs(10);

/// The connection kept from the last call; the mutex also serialises input.
static CONNECTION: Mutex<Option<Kept>> = Mutex::new(None);

struct Kept {
    display: String,
    enigo: Enigo,
    last_used: Instant,
    /// False after a failed call: the connection may be dead, so the next call opens a new
    /// one. It is still kept until then, so that what it did type keeps its bindings.
    reusable: bool,
}

/// Runs `work` on the calling (blocking) thread with the connection to `display`, holding the
/// input lock: the kept connection when it is recent and to the same display, else a new one.
/// A panic during `work` drops the connection (releasing any key it held) while unwinding and
/// poisons the lock, which is then used as it is: the slot it guards is empty by then.
fn with_enigo<T>(
    display: &str,
    work: impl FnOnce(&mut Enigo) -> Result<T, ToolError>,
) -> Result<T, ToolError> {
    let mut slot = CONNECTION.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = slot.take().filter(|kept| {
        kept.reusable && kept.display == display && kept.last_used.elapsed() < REUSE_WITHIN
    });
    let mut kept = match kept {
        Some(kept) => kept,
        None => Kept {
            display: display.to_owned(),
            enigo: connect(display)?,
            last_used: Instant::now(),
            reusable: true,
        },
    };
    let result = work(&mut kept.enigo);
    kept.last_used = Instant::now();
    kept.reusable = result.is_ok();
    *slot = Some(kept);
    result
}

/// Types `text` into the focused window, character by character (enigo binds characters
/// missing from the layout to spare keycodes). Line breaks (`\n`, `\r\n`) press Return; NUL
/// characters are skipped.
pub async fn type_text(text: &str) -> Result<ToolOutput, ToolError> {
    let display = x11_display("typing and clicking")?;
    let chars = text.chars().count();
    let timeout = BASE_TIMEOUT
        .saturating_add(PER_CHAR_TIMEOUT.saturating_mul(u32::try_from(chars).unwrap_or(u32::MAX)));
    let owned = text.to_owned();
    run_blocking("typing", timeout, move || {
        with_enigo(&display, |enigo| type_lines(enigo, &owned))
    })
    .await?;
    Ok(ToolOutput::text(format!("typed {chars} characters")))
}

/// The blocking part of [`type_text`]. enigo would type `\n` as the X keysym Linefeed, which
/// terminals take as Enter but GUI toolkits generally do not; Return is what a person presses.
fn type_lines(enigo: &mut Enigo, text: &str) -> Result<(), ToolError> {
    let failed = |error: enigo::InputError| ToolError::Failed(format!("typing failed: {error}"));
    for (index, line) in text.replace("\r\n", "\n").split('\n').enumerate() {
        if index > 0 {
            enigo.key(Key::Return, Direction::Click).map_err(failed)?;
        }
        enigo.text(line).map_err(failed)?;
    }
    Ok(())
}

/// Presses a key combination such as `ctrl+c`, `Return`, `alt+F4` or `shift+a` (see
/// [`parse_combo`]): the modifiers go down in order, the key is clicked, the modifiers come up
/// in reverse order.
pub async fn key(combo: &str) -> Result<ToolOutput, ToolError> {
    let (modifiers, key) = parse_combo(combo)?;
    let display = x11_display("typing and clicking")?;
    run_blocking("pressing keys", BASE_TIMEOUT, move || {
        with_enigo(&display, |enigo| press_combo(enigo, &modifiers, key))
    })
    .await?;
    Ok(ToolOutput::text(format!("pressed {}", combo.trim())))
}

/// Moves the pointer to `x`,`y` (absolute screen pixels, origin top left) and clicks the left
/// button. Coordinates outside the screen are refused rather than clamped by the X server, so
/// the caller (often a model reading a screenshot) learns that it aimed wrong.
pub async fn click(x: i32, y: i32) -> Result<ToolOutput, ToolError> {
    let display = x11_display("typing and clicking")?;
    run_blocking("clicking", BASE_TIMEOUT, move || {
        with_enigo(&display, |enigo| click_at(enigo, x, y))
    })
    .await?;
    Ok(ToolOutput::text(format!("clicked at {x},{y}")))
}

/// The blocking part of [`click`].
fn click_at(enigo: &mut Enigo, x: i32, y: i32) -> Result<(), ToolError> {
    let (width, height) = enigo
        .main_display()
        .map_err(|error| ToolError::Failed(format!("reading the screen size: {error}")))?;
    if !(0..width).contains(&x) || !(0..height).contains(&y) {
        return Err(ToolError::Failed(format!(
            "cannot click at {x},{y}: outside the {width}x{height} screen"
        )));
    }
    let failed = |error: enigo::InputError| ToolError::Failed(format!("clicking: {error}"));
    enigo.move_mouse(x, y, Coordinate::Abs).map_err(failed)?;
    enigo.button(Button::Left, Direction::Click).map_err(failed)
}

/// Opens the X11 connection. Failing to connect means there is no usable display (wrong
/// `DISPLAY`, server gone, access refused), which is [`ToolError::NoDisplay`]; the other
/// setup failures (no XTest, a full keymap) are [`ToolError::Failed`].
fn connect(display: &str) -> Result<Enigo, ToolError> {
    let settings = Settings {
        x11_display: Some(display.to_owned()),
        ..Settings::default()
    };
    Enigo::new(&settings).map_err(|error| match error {
        // enigo's own message ("no successful connection") adds nothing to this.
        enigo::NewConError::EstablishCon(_) => ToolError::NoDisplay(format!(
            "cannot connect to the X server at DISPLAY={display}"
        )),
        other => ToolError::Failed(format!("setting up input: {other}")),
    })
}

/// Holds `modifiers`, clicks `key`, then releases the modifiers that went down, even when a
/// later step failed: a modifier left held would corrupt everything typed on the desktop
/// afterwards. (enigo also releases held keys when dropped; this does not rely on it.)
fn press_combo(enigo: &mut Enigo, modifiers: &[Key], key: Key) -> Result<(), ToolError> {
    let failed = |error: enigo::InputError| ToolError::Failed(format!("pressing keys: {error}"));
    let mut pressed = 0;
    let mut result = Ok(());
    for &modifier in modifiers {
        if let Err(error) = enigo.key(modifier, Direction::Press) {
            result = Err(failed(error));
            break;
        }
        pressed += 1;
    }
    if result.is_ok() {
        result = enigo.key(key, Direction::Click).map_err(failed);
    }
    for &modifier in modifiers[..pressed].iter().rev() {
        let released = enigo.key(modifier, Direction::Release).map_err(failed);
        if result.is_ok() {
            result = released;
        }
    }
    result
}

/// Parses a key combination into the modifiers to hold and the key to press.
///
/// Parts are separated by `+` (a trailing `++` means the `+` key itself) and may be surrounded
/// by spaces. Every part but the last must be a modifier: `ctrl`/`control`, `alt`, `shift`,
/// `super`/`meta`/`win`. The last part is a modifier (pressed alone), a key name, or a single
/// character, typed as that character (`shift+a` holds Shift and presses `a`; `A` alone is
/// the character `A`). Key names ignore case: `Return`/`Enter`, `Tab`, `Escape`/`Esc`,
/// `BackSpace`/`Backspace`, `Delete`/`Del`, `Home`, `End`, `PageUp`/`Page_Up`,
/// `PageDown`/`Page_Down`, `Up`, `Down`, `Left`, `Right`, `F1`..`F12`, `Space`. Anything else is
/// [`ToolError::Failed`] naming the part. Pure: needs no display.
pub fn parse_combo(combo: &str) -> Result<(Vec<Key>, Key), ToolError> {
    let trimmed = combo.trim();
    let (modifier_part, key_part) = if trimmed == "+" {
        ("", "+")
    } else if let Some(rest) = trimmed.strip_suffix("++") {
        (rest, "+")
    } else {
        match trimmed.rsplit_once('+') {
            Some((modifiers, key)) => (modifiers, key.trim()),
            None => ("", trimmed),
        }
    };
    if key_part.is_empty() {
        return Err(ToolError::Failed(format!(
            "no key in combination {combo:?}"
        )));
    }
    let mut modifiers = Vec::new();
    if !modifier_part.trim().is_empty() {
        for part in modifier_part.split('+').map(str::trim) {
            let modifier = modifier_key(part).ok_or_else(|| {
                if part.is_empty() {
                    ToolError::Failed(format!("empty part in key combination {combo:?}"))
                } else if named_key(part).is_some() || part.chars().count() == 1 {
                    ToolError::Failed(format!(
                        "{part} is not a modifier (ctrl, alt, shift, super) in {combo:?}"
                    ))
                } else {
                    ToolError::Failed(format!("unknown key {part}"))
                }
            })?;
            if !modifiers.contains(&modifier) {
                modifiers.push(modifier);
            }
        }
    }
    let key = modifier_key(key_part)
        .or_else(|| named_key(key_part))
        .or_else(|| single_char(key_part).map(Key::Unicode))
        .ok_or_else(|| ToolError::Failed(format!("unknown key {key_part}")))?;
    Ok((modifiers, key))
}

fn single_char(part: &str) -> Option<char> {
    let mut chars = part.chars();
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

fn modifier_key(name: &str) -> Option<Key> {
    let key = match name.to_ascii_lowercase().as_str() {
        "ctrl" | "control" => Key::Control,
        "alt" => Key::Alt,
        "shift" => Key::Shift,
        "super" | "meta" | "win" => Key::Meta,
        _ => return None,
    };
    Some(key)
}

fn named_key(name: &str) -> Option<Key> {
    let key = match name.to_ascii_lowercase().as_str() {
        "return" | "enter" => Key::Return,
        "tab" => Key::Tab,
        "escape" | "esc" => Key::Escape,
        "backspace" => Key::Backspace,
        "delete" | "del" => Key::Delete,
        "home" => Key::Home,
        "end" => Key::End,
        "pageup" | "page_up" => Key::PageUp,
        "pagedown" | "page_down" => Key::PageDown,
        "up" => Key::UpArrow,
        "down" => Key::DownArrow,
        "left" => Key::LeftArrow,
        "right" => Key::RightArrow,
        "space" => Key::Space,
        "f1" => Key::F1,
        "f2" => Key::F2,
        "f3" => Key::F3,
        "f4" => Key::F4,
        "f5" => Key::F5,
        "f6" => Key::F6,
        "f7" => Key::F7,
        "f8" => Key::F8,
        "f9" => Key::F9,
        "f10" => Key::F10,
        "f11" => Key::F11,
        "f12" => Key::F12,
        _ => return None,
    };
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(combo: &str) -> (Vec<Key>, Key) {
        parse_combo(combo).unwrap_or_else(|error| panic!("{combo:?}: {error}"))
    }

    fn failure(combo: &str) -> String {
        match parse_combo(combo) {
            Err(ToolError::Failed(message)) => message,
            other => panic!("{combo:?}: expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn modifiers_and_keys() {
        assert_eq!(parsed("ctrl+c"), (vec![Key::Control], Key::Unicode('c')));
        assert_eq!(parsed("control+C"), (vec![Key::Control], Key::Unicode('C')));
        assert_eq!(parsed("alt+F4"), (vec![Key::Alt], Key::F4));
        assert_eq!(parsed("shift+a"), (vec![Key::Shift], Key::Unicode('a')));
        assert_eq!(
            parsed("ctrl+alt+Delete"),
            (vec![Key::Control, Key::Alt], Key::Delete)
        );
        assert_eq!(parsed("super+e"), (vec![Key::Meta], Key::Unicode('e')));
        assert_eq!(parsed("Meta+Tab"), (vec![Key::Meta], Key::Tab));
        assert_eq!(parsed("win+Up"), (vec![Key::Meta], Key::UpArrow));
        assert_eq!(
            parsed(" ctrl + shift + t "),
            (vec![Key::Control, Key::Shift], Key::Unicode('t'))
        );
    }

    #[test]
    fn named_keys_ignore_case() {
        for (name, key) in [
            ("Return", Key::Return),
            ("enter", Key::Return),
            ("Tab", Key::Tab),
            ("Escape", Key::Escape),
            ("esc", Key::Escape),
            ("BackSpace", Key::Backspace),
            ("Backspace", Key::Backspace),
            ("Delete", Key::Delete),
            ("Home", Key::Home),
            ("End", Key::End),
            ("PageUp", Key::PageUp),
            ("Page_Down", Key::PageDown),
            ("Up", Key::UpArrow),
            ("down", Key::DownArrow),
            ("Left", Key::LeftArrow),
            ("RIGHT", Key::RightArrow),
            ("F1", Key::F1),
            ("f12", Key::F12),
            ("Space", Key::Space),
        ] {
            assert_eq!(parsed(name), (vec![], key), "{name}");
        }
    }

    #[test]
    fn single_characters_are_unicode() {
        assert_eq!(parsed("a"), (vec![], Key::Unicode('a')));
        assert_eq!(parsed("A"), (vec![], Key::Unicode('A')));
        assert_eq!(parsed("é"), (vec![], Key::Unicode('é')));
        assert_eq!(parsed("1"), (vec![], Key::Unicode('1')));
        assert_eq!(parsed("+"), (vec![], Key::Unicode('+')));
        assert_eq!(parsed("ctrl++"), (vec![Key::Control], Key::Unicode('+')));
        assert_eq!(parsed("ctrl+-"), (vec![Key::Control], Key::Unicode('-')));
    }

    #[test]
    fn a_modifier_alone_is_the_key() {
        assert_eq!(parsed("ctrl"), (vec![], Key::Control));
        assert_eq!(parsed("super"), (vec![], Key::Meta));
        assert_eq!(parsed("ctrl+shift"), (vec![Key::Control], Key::Shift));
    }

    #[test]
    fn repeated_modifiers_are_held_once() {
        assert_eq!(
            parsed("ctrl+ctrl+x"),
            (vec![Key::Control], Key::Unicode('x'))
        );
    }

    #[test]
    fn unknown_names_are_named_in_the_error() {
        assert_eq!(failure("Hyper"), "unknown key Hyper");
        assert_eq!(failure("ctrl+Banana"), "unknown key Banana");
        assert_eq!(failure("F13"), "unknown key F13");
        assert_eq!(failure("hyper+x"), "unknown key hyper");
    }

    #[test]
    fn malformed_combinations_fail() {
        assert!(failure("").contains("no key"));
        assert!(failure("ctrl+").contains("no key"));
        assert!(failure("ctrl++x").contains("empty part"));
        assert!(failure("a+b").contains("not a modifier"));
        assert!(failure("Return+x").contains("not a modifier"));
    }
}
