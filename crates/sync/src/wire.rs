//! Framing shared by errand's protocols: a big-endian `u32` length, then that many bytes.
//!
//! Every read is bounded by a maximum frame size checked before anything is allocated, so a
//! peer cannot make us buffer more than that per stream. Generic over tokio's async IO traits so
//! that the same code runs on QUIC streams and, in tests, on in-memory pipes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod compression;

pub use compression::{DecodeError, MessageDecoder, MessageEncoder, uncompressed};

/// Frames larger than this are refused. Large enough for the whole-document message that
/// brings a fresh device up to date on a busy thread; large blobs travel on their own protocol.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer announced a {0}-byte frame, more than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    put_frame(&mut buf, payload);
    w.write_all(&buf).await?;
    Ok(())
}

/// Appends `payload` to `out` as a frame. The caller keeps payloads within [`MAX_FRAME`]
/// (ours are: the encoder's output of a message the session bounded).
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Reads one frame of at most `max` bytes. `Ok(None)` when the stream ends cleanly between
/// frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(body))
}

/// The buffer room a [`FrameReader`] keeps between frames.
const KEEP_READ_ROOM: usize = 4 * 1024;

/// Reads frames one after another from a stream, keeping partial input in its own buffer, so
/// that [`FrameReader::next`] may be abandoned at any await (as a `select!` branch) without
/// losing bytes. A document stream reads in the same task that applies what it reads: no task
/// and channel hop between the socket and the document.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    max: usize,
}

impl FrameReader {
    /// A reader refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            max,
        }
    }

    /// The next frame. `Ok(None)` when the stream ends cleanly between frames. Cancel-safe:
    /// it only awaits `read_buf`, which reads nothing when cancelled, and bytes read are kept.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let wanted = match self.buf.get(..4) {
                Some(len) => {
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if len > self.max {
                        return Err(FrameError::TooLarge(len));
                    }
                    if self.buf.len() >= 4 + len {
                        let frame = self.buf[4..4 + len].to_vec();
                        self.buf.drain(..4 + len);
                        // Do not hold on to the room a rare big frame (a first sync) needed.
                        if self.buf.capacity() > KEEP_READ_ROOM {
                            self.buf.shrink_to(KEEP_READ_ROOM);
                        }
                        return Ok(Some(frame));
                    }
                    4 + len
                }
                None => 4,
            };
            // Room for the rest of this frame (bounded by `max`, checked above), and at least
            // a few small frames' worth so that one read usually takes a whole message.
            self.buf
                .reserve_exact(wanted.max(KEEP_READ_ROOM) - self.buf.len());
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b, 16).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut b, 16).await.unwrap().unwrap(), b"");
        assert!(read_frame(&mut b, 16).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&1000u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 999).await,
            Err(FrameError::TooLarge(1000))
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 999).await,
            Err(FrameError::Truncated)
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 999).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_frame_reader_abandoned_mid_frame_loses_nothing() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(64);
        // Half a frame, then a read that is given up on (as when `select!` takes another
        // branch), then the rest: the frame still comes out whole.
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"he").await.unwrap();
        let abandoned =
            tokio::time::timeout(std::time::Duration::from_millis(1), reader.next(&mut b)).await;
        assert!(abandoned.is_err(), "no whole frame yet");
        a.write_all(b"llo").await.unwrap();
        // Two frames in one write come out one at a time.
        write_frame(&mut a, b"one").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        assert_eq!(reader.next(&mut b).await.unwrap().unwrap(), b"hello");
        assert_eq!(reader.next(&mut b).await.unwrap().unwrap(), b"one");
        assert_eq!(reader.next(&mut b).await.unwrap().unwrap(), b"");
        drop(a);
        assert!(reader.next(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_reader_refuses_oversized_and_truncated_frames() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&65u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            FrameReader::new(64).next(&mut b).await,
            Err(FrameError::TooLarge(65))
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            FrameReader::new(64).next(&mut b).await,
            Err(FrameError::Truncated)
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            FrameReader::new(64).next(&mut b).await,
            Err(FrameError::Truncated)
        ));
    }
}
