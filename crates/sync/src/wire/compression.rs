//! Compression of the sync messages on a document stream.
//!
//! Each direction of a stream keeps one deflate context across its messages, flushed (not
//! reset) after each, so a message can point back into the ones before it. That is what makes
//! it pay: a new task's message repeats the sender's actor id, the hash of its previous change
//! (the new change's dependency, sent before as a head), the target device and the field
//! names, and with a shared history these cost a few bytes each. Measured on messages like
//! errand's, a new task's message shrinks from about 380 bytes to about 110.
//!
//! Every frame starts with one byte that says how the rest is encoded:
//! - [`RAW`]: the sync message itself;
//! - [`DEFLATE`]: raw deflate data continuing the sender's context, ending in a sync flush
//!   whose final `00 00 ff ff` is left out (the receiver puts it back);
//! - [`DEFLATE_FRESH`]: the same, from a new context: the receiver starts a new one too.
//!
//! The window is 4 KiB (a few messages) to keep the contexts small, and a sender drops its
//! context when the stream is idle ([`MessageEncoder::forget`]) and starts fresh next time.
//! Decoding is bounded: a frame that inflates beyond the caller's limit is an error, not an
//! allocation.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The frame holds the message as it is.
pub const RAW: u8 = 0;
/// The frame holds deflate data that continues the sender's context.
pub const DEFLATE: u8 = 1;
/// The frame holds deflate data from a new context.
pub const DEFLATE_FRESH: u8 = 2;

/// Larger messages are sent as they are, without touching the context: they are the bulk
/// of a fresh device's first sync, whose changes automerge has mostly compressed already, so
/// deflate would cost time and save little.
const COMPRESS_AT_MOST: usize = 16 * 1024;
/// log2 of the deflate window.
const WINDOW_BITS: u8 = 12;
/// Level 3 rather than zlib's default 6: measured on a burst of new threads (`errand-bench
/// --only h`), deflate at 6 took 6% of the desktop's CPU and 3% of the phone's, and at 3 about
/// half that, for 391 bytes per new task on the wire against 387 (level 1: 401).
const LEVEL: u32 = 3;
/// The end of every sync flush, left out on the wire.
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("unknown message encoding {0}")]
    UnknownEncoding(u8),
    #[error("compressed frame continues a context that was never started")]
    NoContext,
    #[error("corrupt compressed frame: {0}")]
    Corrupt(String),
    #[error("frame inflates beyond {0} bytes")]
    TooLarge(usize),
}

/// A message sent without compression (for tests and tools that speak the protocol by hand).
pub fn uncompressed(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 1);
    frame.push(RAW);
    frame.extend_from_slice(message);
    frame
}

/// The sending half: one per direction of a stream.
#[derive(Debug, Default)]
pub struct MessageEncoder {
    context: Option<Compress>,
}

impl MessageEncoder {
    /// Whether a context is held (and so worth dropping when idle).
    pub fn holds_context(&self) -> bool {
        self.context.is_some()
    }

    /// Drops the context; the next frame starts a fresh one.
    pub fn forget(&mut self) {
        self.context = None;
    }

    /// The frame for `message`.
    pub fn encode(&mut self, message: &[u8]) -> Vec<u8> {
        if message.len() > COMPRESS_AT_MOST {
            return uncompressed(message);
        }
        let (tag, context) = match self.context.take() {
            Some(context) => (DEFLATE, context),
            None => (
                DEFLATE_FRESH,
                Compress::new_with_window_bits(Compression::new(LEVEL), false, WINDOW_BITS),
            ),
        };
        let mut context = context;
        match deflate(&mut context, tag, message) {
            Some(frame) => {
                self.context = Some(context);
                frame
            }
            // The context is in an unknown state: send this one as it is and start afresh.
            None => uncompressed(message),
        }
    }
}

fn deflate(context: &mut Compress, tag: u8, message: &[u8]) -> Option<Vec<u8>> {
    let mut frame = Vec::with_capacity(message.len() / 2 + 64);
    frame.push(tag);
    let start = context.total_in();
    loop {
        let consumed = usize::try_from(context.total_in() - start).ok()?;
        if frame.capacity() - frame.len() < 64 {
            frame.reserve(frame.capacity());
        }
        context
            .compress_vec(&message[consumed..], &mut frame, FlushCompress::Sync)
            .ok()?;
        let all_in = usize::try_from(context.total_in() - start).ok()? == message.len();
        // The flush is complete once a call leaves output space unused.
        if all_in && frame.len() < frame.capacity() {
            break;
        }
    }
    if frame.ends_with(&SYNC_TAIL) {
        frame.truncate(frame.len() - SYNC_TAIL.len());
        Some(frame)
    } else {
        None
    }
}

/// The receiving half: one per direction of a stream.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    context: Option<Decompress>,
}

impl MessageDecoder {
    /// The message in `frame`, at most `limit` bytes of it.
    pub fn decode(&mut self, frame: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
        let (&tag, body) = frame.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            RAW => Ok(body.to_vec()),
            DEFLATE | DEFLATE_FRESH => {
                if tag == DEFLATE_FRESH {
                    self.context = Some(Decompress::new_with_window_bits(false, WINDOW_BITS));
                }
                let context = self.context.as_mut().ok_or(DecodeError::NoContext)?;
                let result = inflate(context, body, limit);
                if result.is_err() {
                    // Whatever follows cannot be trusted to continue this context.
                    self.context = None;
                }
                result
            }
            other => Err(DecodeError::UnknownEncoding(other)),
        }
    }
}

fn inflate(context: &mut Decompress, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut input = Vec::with_capacity(body.len() + SYNC_TAIL.len());
    input.extend_from_slice(body);
    input.extend_from_slice(&SYNC_TAIL);
    let mut out: Vec<u8> = Vec::with_capacity((body.len() * 4).clamp(64, limit.max(64)));
    let start = context.total_in();
    loop {
        let consumed = usize::try_from(context.total_in() - start)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if out.capacity() - out.len() < 64 {
            if out.len() >= limit {
                return Err(DecodeError::TooLarge(limit));
            }
            let more = out.capacity().min(limit.saturating_sub(out.len()) + 64);
            out.reserve(more.max(64));
        }
        let status = context
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge(limit));
        }
        let all_in = usize::try_from(context.total_in() - start)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?
            == input.len();
        if status == Status::StreamEnd {
            return Err(DecodeError::Corrupt("the stream ended".into()));
        }
        if all_in && out.len() < out.capacity() {
            return Ok(out);
        }
        if status == Status::BufError && !all_in && out.len() < out.capacity() {
            return Err(DecodeError::Corrupt("no progress".into()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn messages() -> Vec<Vec<u8>> {
        (0..50u32)
            .map(|i| {
                let mut m = b"actor 7d3f2a9c7d3f2a9c7d3f2a9c target 0123456789abcdef ".to_vec();
                m.extend_from_slice(format!("task {i} prompt resize the photos {i}").as_bytes());
                m.extend((0..i * 7).map(|b| (b * 31 + i) as u8));
                m
            })
            .collect()
    }

    #[test]
    fn a_stream_of_messages_round_trips_and_shrinks() {
        let (mut enc, mut dec) = (MessageEncoder::default(), MessageDecoder::default());
        let (mut raw, mut sent) = (0, 0);
        for (i, m) in messages().iter().enumerate() {
            let frame = enc.encode(m);
            assert_eq!(frame[0], if i == 0 { DEFLATE_FRESH } else { DEFLATE });
            raw += m.len();
            sent += frame.len();
            assert_eq!(&dec.decode(&frame, 1 << 20).unwrap(), m);
        }
        assert!(sent < raw, "{sent} bytes sent for {raw}");
    }

    #[test]
    fn forgetting_starts_a_fresh_context_that_the_receiver_follows() {
        let (mut enc, mut dec) = (MessageEncoder::default(), MessageDecoder::default());
        let all = messages();
        for m in &all[..3] {
            dec.decode(&enc.encode(m), 1 << 20).unwrap();
        }
        enc.forget();
        assert!(!enc.holds_context());
        let frame = enc.encode(&all[3]);
        assert_eq!(frame[0], DEFLATE_FRESH);
        assert_eq!(dec.decode(&frame, 1 << 20).unwrap(), all[3]);
        // A receiver that missed the earlier frames can follow from a fresh one.
        let frame = {
            enc.forget();
            enc.encode(&all[4])
        };
        assert_eq!(
            MessageDecoder::default().decode(&frame, 1 << 20).unwrap(),
            all[4]
        );
    }

    #[test]
    fn raw_empty_unknown_and_contextless_frames() {
        let mut dec = MessageDecoder::default();
        assert_eq!(dec.decode(&uncompressed(b"hi"), 10).unwrap(), b"hi");
        assert_eq!(dec.decode(&[], 10), Err(DecodeError::Empty));
        assert_eq!(
            dec.decode(&[9, 1], 10),
            Err(DecodeError::UnknownEncoding(9))
        );
        let mut enc = MessageEncoder::default();
        let first = enc.encode(b"first message");
        let second = enc.encode(b"second message");
        assert_eq!(
            MessageDecoder::default().decode(&second, 100),
            Err(DecodeError::NoContext)
        );
        assert_eq!(dec.decode(&first, 100).unwrap(), b"first message");
    }

    #[test]
    fn large_messages_go_raw_and_leave_the_context_as_it_was() {
        let (mut enc, mut dec) = (MessageEncoder::default(), MessageDecoder::default());
        let all = messages();
        dec.decode(&enc.encode(&all[0]), 1 << 20).unwrap();
        let big = vec![7u8; COMPRESS_AT_MOST + 1];
        let frame = enc.encode(&big);
        assert_eq!(frame[0], RAW);
        assert_eq!(dec.decode(&frame, 1 << 20).unwrap(), big);
        let next = enc.encode(&all[1]);
        assert_eq!(next[0], DEFLATE);
        assert_eq!(dec.decode(&next, 1 << 20).unwrap(), all[1]);
    }

    #[test]
    fn a_frame_that_inflates_past_the_limit_is_refused() {
        let mut enc = MessageEncoder::default();
        let big = vec![b'a'; COMPRESS_AT_MOST];
        let frame = enc.encode(&big);
        assert!(frame.len() < 1_000);
        let mut dec = MessageDecoder::default();
        assert_eq!(dec.decode(&frame, 1_000), Err(DecodeError::TooLarge(1_000)));
        assert_eq!(
            MessageDecoder::default()
                .decode(&frame, COMPRESS_AT_MOST)
                .unwrap(),
            big
        );
    }

    #[test]
    fn corrupt_compressed_frames_are_errors_not_panics() {
        let mut enc = MessageEncoder::default();
        let frame = enc.encode(&messages()[10]);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let mut bad = frame.clone();
            for _ in 0..1 + x % 3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = 1 + (x as usize) % (bad.len() - 1);
                bad[i] ^= 1 << (x % 8);
            }
            let _ = MessageDecoder::default().decode(&bad, 1 << 16);
        }
        for cut in 1..frame.len() {
            let _ = MessageDecoder::default().decode(&frame[..cut], 1 << 16);
        }
    }
}
