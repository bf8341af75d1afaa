//! The messages of `errand/sync/5`, and their encoding. Pure: bytes in, values out, every
//! length checked against what is left before anything is allocated.
//!
//! One bidirectional stream per connection carries every document; each message says which
//! document it is about. The stream's frames are compressed as `wire::compression` describes,
//! so the repeated document ids and change hashes cost a few bytes.

use crate::schema::DocId;

use super::digest::{Digest, HeadsHash};

/// The version spoken in [`Msg::Hello`]; a peer speaking another one is refused.
pub const PROTOCOL_VERSION: u8 = 5;
/// At most this many entries in one [`Msg::Catalog`] page.
pub const CATALOG_PAGE: usize = 512;

const HELLO: u8 = 1;
const SYNC: u8 = 2;
const DIGEST: u8 = 3;
const CATALOG_REQUEST: u8 = 4;
const CATALOG: u8 = 5;
const PING: u8 = 6;
const PONG: u8 = 7;

const DOC_INDEX: u8 = 0;
const DOC_THREAD: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The first message each side sends: its version and what it holds.
    Hello {
        version: u8,
        digest: Digest,
        docs: u32,
    },
    /// An automerge sync message about one document, with the signatures of the changes it
    /// carries (`authorship::Envelope`; opaque here).
    Sync { doc: DocId, message: Vec<u8> },
    /// "I have nothing more to send, and this is what I hold now."
    Digest(Digest),
    /// "We hold different things and I cannot tell which: list yours."
    CatalogRequest,
    /// One page of the sender's documents with their fingerprints, in id order.
    Catalog {
        entries: Vec<(DocId, HeadsHash)>,
        last: bool,
    },
    /// "Are you there, and have you read this far?": answered with its own [`Msg::Pong`] as
    /// soon as it is read. Sent while an answer to something else is overdue (see
    /// `session::PROBE_AFTER`), and to learn whether the peer has read what we sent.
    Ping,
    /// The answer to [`Msg::Ping`].
    Pong,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message ends early")]
    Truncated,
    #[error("invalid document id")]
    BadDocId,
    #[error("catalog page of {0} entries, more than {CATALOG_PAGE}")]
    CatalogTooLong(usize),
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Msg::Hello {
                version,
                digest,
                docs,
            } => {
                out.push(HELLO);
                out.push(*version);
                out.extend_from_slice(&digest.0);
                out.extend_from_slice(&docs.to_be_bytes());
            }
            Msg::Sync { doc, message } => {
                out.reserve(message.len() + 18);
                out.push(SYNC);
                put_doc(&mut out, doc);
                out.extend_from_slice(message);
            }
            Msg::Digest(d) => {
                out.push(DIGEST);
                out.extend_from_slice(&d.0);
            }
            Msg::CatalogRequest => out.push(CATALOG_REQUEST),
            Msg::Ping => out.push(PING),
            Msg::Pong => out.push(PONG),
            Msg::Catalog { entries, last } => {
                out.push(CATALOG);
                out.push(u8::from(*last));
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for (doc, hash) in entries {
                    put_doc(&mut out, doc);
                    out.extend_from_slice(&hash.0);
                }
            }
        }
        out
    }

    /// [`Msg::decode`], taking the bytes: a `Sync` message keeps them as its payload (the
    /// header moved out) instead of copying what may be megabytes.
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Msg, MsgError> {
        if bytes.first() != Some(&SYNC) {
            return Msg::decode(&bytes);
        }
        let mut r = Reader(&bytes[1..]);
        let doc = r.doc()?;
        let header = bytes.len() - r.0.len();
        bytes.drain(..header);
        Ok(Msg::Sync {
            doc,
            message: bytes,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Msg, MsgError> {
        let mut r = Reader(bytes);
        let msg = match r.u8().map_err(|_| MsgError::Empty)? {
            HELLO => Msg::Hello {
                version: r.u8()?,
                digest: Digest(r.array()?),
                docs: u32::from_be_bytes(r.array()?),
            },
            SYNC => {
                let doc = r.doc()?;
                Msg::Sync {
                    doc,
                    message: r.rest().to_vec(),
                }
            }
            DIGEST => Msg::Digest(Digest(r.array()?)),
            CATALOG_REQUEST => Msg::CatalogRequest,
            PING => Msg::Ping,
            PONG => Msg::Pong,
            CATALOG => {
                let last = r.u8()? != 0;
                let n = usize::from(u16::from_be_bytes(r.array()?));
                if n > CATALOG_PAGE {
                    return Err(MsgError::CatalogTooLong(n));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let doc = r.doc()?;
                    entries.push((doc, HeadsHash(r.array()?)));
                }
                Msg::Catalog { entries, last }
            }
            other => return Err(MsgError::UnknownType(other)),
        };
        match r.rest().len() {
            0 => Ok(msg),
            n => Err(MsgError::Trailing(n)),
        }
    }
}

fn put_doc(out: &mut Vec<u8>, doc: &DocId) {
    if doc.is_index() {
        out.push(DOC_INDEX);
    } else {
        out.push(DOC_THREAD);
        // A thread id is 32 hex digits (`DocId::parse`): 16 bytes on the wire.
        let bytes = crate::ids::parse_hex::<16>(doc.as_str()).unwrap_or_default();
        out.extend_from_slice(&bytes);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, MsgError> {
        let (&b, rest) = self.0.split_first().ok_or(MsgError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgError> {
        if self.0.len() < N {
            return Err(MsgError::Truncated);
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    fn doc(&mut self) -> Result<DocId, MsgError> {
        match self.u8()? {
            DOC_INDEX => Ok(DocId::index()),
            DOC_THREAD => {
                let bytes: [u8; 16] = self.array()?;
                DocId::parse(&crate::ids::hex(&bytes)).ok_or(MsgError::BadDocId)
            }
            _ => Err(MsgError::BadDocId),
        }
    }

    fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Hello {
                version: PROTOCOL_VERSION,
                digest: Digest([7; 16]),
                docs: 1234,
            },
            Msg::Sync {
                doc: DocId::index(),
                message: vec![0x42, 1, 2, 3],
            },
            Msg::Sync {
                doc: DocId::new_thread(),
                message: vec![],
            },
            Msg::Digest(Digest([1; 16])),
            Msg::CatalogRequest,
            Msg::Ping,
            Msg::Pong,
            Msg::Catalog {
                entries: vec![
                    (DocId::index(), HeadsHash([2; 16])),
                    (DocId::new_thread(), HeadsHash([3; 16])),
                ],
                last: true,
            },
        ]
    }

    #[test]
    fn messages_round_trip() {
        for m in samples() {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
            assert_eq!(Msg::decode_owned(m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error_not_a_panic() {
        for m in samples() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                // A sync message's payload may be cut anywhere: that is automerge's to judge.
                if matches!(m, Msg::Sync { .. }) && cut >= 18.min(bytes.len()) {
                    continue;
                }
                if matches!(m, Msg::Sync { ref doc, .. } if doc.is_index()) && cut >= 2 {
                    continue;
                }
                assert!(Msg::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
                assert!(
                    Msg::decode_owned(bytes[..cut].to_vec()).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            if !matches!(m, Msg::Sync { .. }) {
                let mut longer = bytes.clone();
                longer.push(0);
                assert!(Msg::decode(&longer).is_err());
            }
        }
        assert_eq!(Msg::decode(&[99]), Err(MsgError::UnknownType(99)));
        assert_eq!(Msg::decode(&[SYNC, 7]), Err(MsgError::BadDocId));
        let long = [CATALOG, 0, 0xff, 0xff];
        assert_eq!(Msg::decode(&long), Err(MsgError::CatalogTooLong(65535)));
    }
}
