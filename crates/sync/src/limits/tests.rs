use std::io::Write;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};

use super::*;

/// The vector: a `have` whose bloom filter claims 4,294,967,295 probes.
const FOUR_BILLION_PROBES: [u8; 16] = [
    0x42, 0x00, 0x00, 0x01, 0x00, 0x09, 0x01, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0x00,
];
/// One entry, zero bits per entry: automerge takes probes modulo zero bits.
const ZERO_BITS: [u8; 10] = [0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x07, 0x00];

fn uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut n: i64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

/// A v1 message with no heads, needs or haves whose one `changes` entry is `chunk`.
fn message_with_chunk(chunk: &[u8]) -> Vec<u8> {
    let mut m = vec![0x42, 0, 0, 0, 1];
    uleb(&mut m, chunk.len() as u64);
    m.extend_from_slice(chunk);
    m
}

fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut c = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, kind];
    uleb(&mut c, body.len() as u64);
    c.extend_from_slice(body);
    c
}

/// A change body with one integer column holding `column`.
fn change_body(column: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 1, 0xaa, 1, 1, 0, 0, 0, 1];
    uleb(&mut b, (4 << 4) | 2); // the action column, integers
    uleb(&mut b, column.len() as u64);
    b.extend_from_slice(column);
    b
}

fn refused(bytes: &[u8]) -> Refusal {
    Limits::DEFAULT.check_sync_message(bytes).unwrap_err()
}

#[test]
fn the_bloom_filter_that_claims_four_billion_probes_is_refused() {
    assert_eq!(
        refused(&FOUR_BILLION_PROBES),
        Refusal::Bloom {
            entries: 1,
            bits_per_entry: 10,
            probes: u64::from(u32::MAX)
        }
    );
}

#[test]
fn a_bloom_filter_with_zero_bits_is_refused() {
    assert!(matches!(refused(&ZERO_BITS), Refusal::Bloom { .. }));
    // Zero entries with bits, and zero probes, are not what automerge sends either.
    let zero_entries = [0x42, 0, 0, 1, 0, 4, 0, 10, 7, 0xff, 0];
    assert!(matches!(refused(&zero_entries), Refusal::Bloom { .. }));
    // And the bits must be there.
    let missing_bits = [0x42, 0, 0, 1, 0, 3, 0x10, 10, 7, 0];
    assert_eq!(refused(&missing_bits), Refusal::Truncated("bloom filter"));
}

#[test]
fn counts_beyond_the_limits_are_refused_before_anything_is_read() {
    let l = Limits::DEFAULT;
    let cases: [(Vec<u8>, &str, u64); 4] = [
        (vec![0x42], "heads", l.max_heads),
        (vec![0x42, 0], "needs", l.max_needs),
        (vec![0x42, 0, 0], "haves", l.max_haves),
        (vec![0x42, 0, 0, 0], "changes", l.max_changes),
    ];
    for (mut prefix, what, max) in cases {
        uleb(&mut prefix, max + 1);
        assert_eq!(
            refused(&prefix),
            Refusal::TooMany {
                what,
                count: max + 1,
                max
            }
        );
    }
    assert_eq!(refused(&[0x44]), Refusal::UnknownType(0x44));
    assert_eq!(
        refused(&[
            0x42, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
        ]),
        Refusal::BadNumber("heads")
    );
}

#[test]
fn a_change_that_claims_more_operations_than_the_limit_is_refused() {
    // One run of 2^40 identical actions: six bytes.
    let mut column = Vec::new();
    sleb(&mut column, 1 << 40);
    uleb(&mut column, 1);
    let message = message_with_chunk(&chunk(1, &change_body(&column)));
    assert!(matches!(
        refused(&message),
        Refusal::TooMany {
            what: "operations in one change",
            ..
        }
    ));
    // The same shape with three actions passes.
    let mut column = Vec::new();
    sleb(&mut column, 3);
    uleb(&mut column, 1);
    let shape = Limits::DEFAULT
        .check_sync_message(&message_with_chunk(&chunk(1, &change_body(&column))))
        .unwrap();
    assert_eq!((shape.chunks, shape.ops), (1, 3));
}

#[test]
fn a_compressed_change_that_inflates_past_the_limit_is_refused() {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate
        .write_all(&vec![0u8; (Limits::DEFAULT.max_change_bytes + 1) as usize])
        .unwrap();
    let bomb = deflate.finish().unwrap();
    assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
    assert!(matches!(
        refused(&message_with_chunk(&chunk(2, &bomb))),
        Refusal::TooMany {
            what: "bytes once inflated",
            ..
        }
    ));
}

#[test]
fn unknown_chunks_and_bad_magic_are_refused() {
    assert_eq!(
        refused(&message_with_chunk(&chunk(3, &[]))),
        Refusal::ChunkType(3)
    );
    let mut bad = chunk(1, &[]);
    bad[0] = 0;
    assert_eq!(refused(&message_with_chunk(&bad)), Refusal::BadMagic);
}

/// A document with `tasks` tasks, each a map with a long text, in many changes.
fn busy_doc(tasks: usize) -> Automerge {
    let mut doc = Automerge::new();
    for i in 0..tasks {
        let mut tx = doc.transaction();
        let task = tx
            .put_object(ROOT, format!("task{i}"), ObjType::Map)
            .unwrap();
        tx.put(&task, "prompt", "do the thing ".repeat(40)).unwrap();
        tx.put(&task, "n", i as i64).unwrap();
        tx.commit();
    }
    doc
}

/// Every message of real syncs (v1 changes, v2 whole documents with deflated columns, bloom
/// filters) passes with the default limits: the bounds never get in honest peers' way.
#[test]
fn every_message_of_an_honest_sync_passes() {
    let mut seen_chunks = 0;
    for (a_tasks, b_tasks) in [(300, 0), (0, 300), (200, 150)] {
        let (mut a, mut b) = (busy_doc(a_tasks), busy_doc(b_tasks));
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        for _ in 0..20 {
            let to_b = a.generate_sync_message(&mut sa).map(sync::Message::encode);
            let to_a = b.generate_sync_message(&mut sb).map(sync::Message::encode);
            if to_b.is_none() && to_a.is_none() {
                break;
            }
            for (bytes, receiver, state) in [(to_b, &mut b, &mut sb), (to_a, &mut a, &mut sa)] {
                if let Some(bytes) = bytes {
                    let shape = Limits::DEFAULT.check_sync_message(&bytes).unwrap();
                    seen_chunks += shape.chunks;
                    let message = sync::Message::decode(&bytes).unwrap();
                    receiver.receive_sync_message(state, message).unwrap();
                }
            }
        }
        assert_eq!(a.get_heads(), b.get_heads());
    }
    assert!(seen_chunks > 0);
}

#[test]
fn a_document_beyond_the_operation_limit_is_refused() {
    let doc = busy_doc(50);
    let mut state = sync::State::new();
    // Ask as a peer with nothing, which gets the whole document.
    let empty = Automerge::new();
    let mut asker = sync::State::new();
    let ask = empty.generate_sync_message(&mut asker).unwrap();
    let mut doc = doc;
    doc.receive_sync_message(&mut state, ask).unwrap();
    let whole = doc.generate_sync_message(&mut state).unwrap().encode();
    let ops = Limits::DEFAULT.check_sync_message(&whole).unwrap().ops;
    assert!(ops >= 100, "{ops}");
    let tight = Limits {
        max_document_ops: ops - 1,
        max_ops_per_change: ops - 1,
        ..Limits::DEFAULT
    };
    assert!(matches!(
        tight.check_sync_message(&whole).unwrap_err(),
        Refusal::TooMany { .. }
    ));
    assert!(tight.check_document_ops(ops).is_err());
}

#[test]
fn truncated_messages_are_refused() {
    let mut doc = busy_doc(3);
    let mut state = sync::State::new();
    let mut asker = sync::State::new();
    let ask = Automerge::new().generate_sync_message(&mut asker).unwrap();
    doc.receive_sync_message(&mut state, ask).unwrap();
    let whole = doc.generate_sync_message(&mut state).unwrap().encode();
    Limits::DEFAULT.check_sync_message(&whole).unwrap();
    // Cut inside the changes (the flags section at the end is read leniently).
    for cut in [1, 2, 10, whole.len() / 2] {
        assert!(
            Limits::DEFAULT.check_sync_message(&whole[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn whole_documents_are_checked_too() {
    let doc = busy_doc(20);
    let shape = Limits::DEFAULT.check_document(&doc.save()).unwrap();
    assert!(shape.ops >= 60, "{shape:?}");
    let tight = Limits {
        max_document_ops: shape.ops - 1,
        ..Limits::DEFAULT
    };
    assert!(tight.check_document(&doc.save()).is_err());
    assert!(Limits::DEFAULT.check_document(b"not a document").is_err());
}

/// A whole document bounds only its own size, and which change wrote what is known only once
/// it is merged: a value longer than one change may be is refused in it before that, however
/// well its column deflates.
#[test]
fn a_whole_document_with_a_value_longer_than_a_change_is_refused() {
    let mut doc = busy_doc(3);
    let mut tx = doc.transaction();
    tx.put(ROOT, "huge", "a".repeat(64 * 1024)).unwrap();
    tx.commit();
    let mut state = sync::State::new();
    let ask = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    doc.receive_sync_message(&mut state, ask).unwrap();
    let whole = doc.generate_sync_message(&mut state).unwrap().encode();
    assert!(
        whole.len() < 16 * 1024,
        "its column deflates: {}",
        whole.len()
    );
    Limits::DEFAULT.check_sync_message(&whole).unwrap();
    Limits::DEFAULT.check_document(&doc.save()).unwrap();

    let tight = Limits {
        max_change_bytes: 64 * 1024 - 1,
        ..Limits::DEFAULT
    };
    for refusal in [
        tight.check_sync_message(&whole).unwrap_err(),
        tight.check_document(&doc.save()).unwrap_err(),
    ] {
        assert_eq!(
            refusal,
            Refusal::TooMany {
                what: "bytes in one value",
                count: 64 * 1024,
                max: 64 * 1024 - 1,
            }
        );
    }
}
