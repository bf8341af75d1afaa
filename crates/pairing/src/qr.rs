//! QR codes for pairing tickets, for a terminal and as a PNG file.
//!
//! Error correction level M (about 15% recoverable) is a compromise: a ticket is around 300
//! characters, and higher levels make the code denser, which hurts more when a phone films a
//! terminal than the lost redundancy does. Both renderings keep the 4-module light quiet zone
//! the QR standard asks for; without it many phone scanners fail to find the code.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use qrcode::{Color, EcLevel, QrCode};

/// Width of the light border around the code, in modules (the standard's minimum).
pub const QUIET_ZONE: usize = 4;
/// Largest PNG side this module writes, in pixels; beyond that a scale is surely a mistake.
const MAX_PNG_SIDE: u64 = 16_384;

/// Why a QR code could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The text does not fit in any QR code at level M.
    #[error("text of {len} bytes is too long for a QR code: share the ticket as text instead")]
    TooLong { len: usize },
    /// The QR encoder refused the input for another reason.
    #[error("cannot encode QR code: {0}")]
    Encode(qrcode::types::QrError),
    /// The requested scale is zero or makes an absurdly large image.
    #[error("cannot draw a QR code at {pixels_per_module} pixels per module: use 1 to 64")]
    BadScale { pixels_per_module: u32 },
    /// The PNG file could not be created or written.
    #[error("cannot write QR code image {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The PNG encoder failed.
    #[error("cannot encode QR code image {path}: {source}")]
    Png {
        path: PathBuf,
        source: png::EncodingError,
    },
}

/// The module matrix with its quiet zone: `side * side` entries, `true` = dark.
struct Matrix {
    side: usize,
    dark: Vec<bool>,
}

impl Matrix {
    fn new(text: &str) -> Result<Matrix, QrError> {
        let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(
            |e| match e {
                qrcode::types::QrError::DataTooLong => QrError::TooLong { len: text.len() },
                other => QrError::Encode(other),
            },
        )?;
        let width = code.width();
        let colors = code.to_colors();
        let side = width + 2 * QUIET_ZONE;
        let mut dark = vec![false; side * side];
        for (i, color) in colors.iter().enumerate() {
            let (x, y) = (i % width, i / width);
            dark[(y + QUIET_ZONE) * side + x + QUIET_ZONE] = *color == Color::Dark;
        }
        Ok(Matrix { side, dark })
    }

    /// Whether the module at (x, y) is dark; anything outside the matrix is light.
    fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.side && y < self.side && self.dark[y * self.side + x]
    }
}

/// Renders `text` as a QR code made of Unicode half blocks, two module rows per line.
///
/// Terminals are usually light text on a dark background, so the *light* modules are drawn
/// (with block characters) and the dark modules are left as background: the result reads as
/// dark modules on a light field, which is what scanners expect. Each line is `side` characters
/// wide and there are `ceil(side / 2)` lines, where `side` is the QR width plus the quiet zone
/// on both sides; the last line's lower half, beyond the code, is left as background.
/// Lines end with `\n`.
pub fn terminal(text: &str) -> Result<String, QrError> {
    let m = Matrix::new(text)?;
    let mut out = String::with_capacity(m.side.div_ceil(2) * (m.side * 3 + 1));
    for y in (0..m.side).step_by(2) {
        for x in 0..m.side {
            let top_light = !m.is_dark(x, y);
            let bottom_light = y + 1 < m.side && !m.is_dark(x, y + 1);
            out.push(match (top_light, bottom_light) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

/// Writes `text` as a QR code to an 8-bit grayscale PNG at `path`: black modules on white, a
/// 4-module quiet zone, each module `pixels_per_module` pixels square (1 to 64).
///
/// An existing file at `path` is replaced.
pub fn write_png(text: &str, path: &Path, pixels_per_module: u32) -> Result<(), QrError> {
    let bad_scale = QrError::BadScale { pixels_per_module };
    if !(1..=64).contains(&pixels_per_module) {
        return Err(bad_scale);
    }
    let m = Matrix::new(text)?;
    let scale = pixels_per_module as usize;
    let side_px = (m.side as u64) * u64::from(pixels_per_module);
    if side_px > MAX_PNG_SIDE {
        return Err(bad_scale);
    }
    let side_px_u32 =
        u32::try_from(side_px).map_err(|_| QrError::BadScale { pixels_per_module })?;
    let side_px = side_px_u32 as usize;

    let mut pixels = Vec::with_capacity(side_px * side_px);
    for py in 0..side_px {
        for px in 0..side_px {
            pixels.push(if m.is_dark(px / scale, py / scale) {
                0u8
            } else {
                255u8
            });
        }
    }

    let write_err = |source| QrError::Write {
        path: path.to_owned(),
        source,
    };
    let png_err = |source| QrError::Png {
        path: path.to_owned(),
        source,
    };
    let file = File::create(path).map_err(write_err)?;
    let mut out = BufWriter::new(file);
    let mut encoder = png::Encoder::new(&mut out, side_px_u32, side_px_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&pixels).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    // Flush explicitly: dropping a BufWriter would swallow a late write error (disk full).
    out.flush().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ticket::Ticket;
    use errand_sync::SpaceId;
    use std::io::BufReader;
    use std::time::Duration;

    fn ticket_text() -> String {
        Ticket::new(
            iroh::SecretKey::generate().public(),
            vec![
                "192.168.178.31:51234".parse().unwrap(),
                "[2001:db8::17]:51234".parse().unwrap(),
                "10.0.0.4:51234".parse().unwrap(),
            ],
            Some("https://euw1-1.relay.iroh.network./".to_owned()),
            SpaceId::random(),
            errand_sync::Role::Phone,
            Duration::from_secs(600),
            1_750_000_000,
        )
        .to_text()
    }

    fn decode_greyscale(w: usize, h: usize, luma: &[u8]) -> String {
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| luma[y * w + x]);
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "expected exactly one QR code");
        grids[0].decode().unwrap().1
    }

    #[test]
    fn png_decodes_to_the_exact_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.png");
        let text = ticket_text();
        write_png(&text, &path, 6).unwrap();

        let decoder = png::Decoder::new(BufReader::new(File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(info.width, info.height);
        let side = Matrix::new(&text).unwrap().side;
        assert_eq!(info.width as usize, side * 6);
        // The quiet zone is white.
        assert!(buf[..info.width as usize * 4 * 6].iter().all(|&p| p == 255));

        let w = info.width as usize;
        let h = info.height as usize;
        assert_eq!(decode_greyscale(w, h, &buf[..w * h]), text);
    }

    #[test]
    fn terminal_rendering_has_the_matrix_shape_and_content() {
        let text = ticket_text();
        let m = Matrix::new(&text).unwrap();
        let out = terminal(&text).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), m.side.div_ceil(2));
        assert!(out.ends_with('\n'));
        for line in &lines {
            assert_eq!(line.chars().count(), m.side);
        }

        // Reading the half blocks back gives the matrix (light = drawn), and it scans.
        let mut luma = vec![0u8; m.side * m.side];
        for (ly, line) in lines.iter().enumerate() {
            for (x, c) in line.chars().enumerate() {
                let (top_light, bottom_light) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected character {other:?}"),
                };
                let y = ly * 2;
                assert_eq!(top_light, !m.is_dark(x, y));
                luma[y * m.side + x] = if top_light { 255 } else { 0 };
                if y + 1 < m.side {
                    assert_eq!(bottom_light, !m.is_dark(x, y + 1));
                    luma[(y + 1) * m.side + x] = if bottom_light { 255 } else { 0 };
                }
            }
        }
        // Scale up so the detector has pixels to work with.
        let s = 4;
        let big = m.side * s;
        let scaled: Vec<u8> = (0..big * big)
            .map(|i| luma[(i / big / s) * m.side + (i % big) / s])
            .collect();
        assert_eq!(decode_greyscale(big, big, &scaled), text);

        // The quiet zone: the first two lines are fully light.
        assert!(lines[0].chars().all(|c| c == '█'));
        assert!(lines[1].chars().all(|c| c == '█'));
    }

    #[test]
    fn ticket_uses_alphanumeric_mode() {
        // Upper-case tickets pack 5.5 bits per character; the same text in lower case has to
        // use byte mode (8 bits per character) and needs a visibly larger code.
        let text = ticket_text();
        let upper = Matrix::new(&text).unwrap().side;
        let lower = Matrix::new(&text.to_ascii_lowercase()).unwrap().side;
        assert!(upper < lower, "{upper} vs {lower}");
        assert!(
            upper - 2 * QUIET_ZONE <= 57,
            "ticket needs a version above 10"
        );
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_png("x", &dir.path().join("a.png"), 0).unwrap_err();
        assert!(matches!(err, QrError::BadScale { .. }), "{err}");
        let err = write_png("x", &dir.path().join("missing/a.png"), 4).unwrap_err();
        assert!(matches!(err, QrError::Write { .. }), "{err}");
        let err = terminal(&"A".repeat(10_000)).unwrap_err();
        assert!(matches!(err, QrError::TooLong { len: 10_000 }), "{err}");
    }
}
