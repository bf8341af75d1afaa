//! What a hostile member sends: inputs crafted to crash, freeze or bloat a node, shared by the
//! node tests here and the command line's end-to-end tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use errand_pairing::membership::{Certificate, Revocation};
use errand_pairing::trust;
use errand_sync::authorship::{Envelope, FixedAuthors};
use errand_sync::limits::Limits;
use errand_sync::replication::{Digest, Msg, msg::PROTOCOL_VERSION};
use errand_sync::schema::{index, thread};
use errand_sync::{DeviceId, DocId, Repo, Role, SYNC_ALPN, SpaceId, Store, wire};
use iroh::endpoint::{ConnectionError, PortmapperConfig, presets};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey};

/// A sync message whose one `have` has a bloom filter claiming 4,294,967,295 probes: automerge
/// 0.12 sizes an allocation from it (about 17 GB) and the process aborts.
pub const FOUR_BILLION_PROBES: [u8; 16] = [
    0x42, 0x00, 0x00, 0x01, 0x00, 0x09, 0x01, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0x00,
];

/// Fifty million probes: no abort, but the document froze for seconds per message.
pub const FIFTY_MILLION_PROBES: [u8; 15] = [
    0x42, 0x00, 0x00, 0x01, 0x00, 0x08, 0x01, 0x0a, 0x80, 0xe1, 0xeb, 0x17, 0xff, 0xff, 0x00,
];

/// A bloom filter of one entry and zero bits: automerge takes every probe modulo zero.
pub const ZERO_BITS: [u8; 10] = [0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x07, 0x00];

/// A frame holding `msg`, uncompressed.
pub fn frame(msg: &Msg) -> Vec<u8> {
    wire::uncompressed(&msg.encode())
}

/// A sync message about `doc` with no change signatures, in a frame.
pub fn sync_frame(doc: &DocId, message: &[u8]) -> Vec<u8> {
    frame(&Msg::Sync {
        doc: doc.clone(),
        message: envelope(message),
    })
}

/// The first sync message of an empty document: what a peer sends to ask for a document it
/// does not hold, and what a peer naming made-up documents sends for each.
pub fn lookup_message() -> Vec<u8> {
    automerge::Automerge::new()
        .generate_sync_message(&mut automerge::sync::State::new())
        .expect("an empty document has a first message")
        .encode()
}

/// An endpoint on 127.0.0.1 with `key`, relays and address lookup off: a device's identity
/// with none of errand's code behind it.
pub async fn raw_endpoint(key: SecretKey) -> Endpoint {
    Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .expect("a loopback address")
        .bind()
        .await
        .expect("bind an endpoint on loopback")
}

/// A paired device whose app is gone and whose key is in the attacker's hands: it speaks
/// `errand/sync` to a peer with whatever frames it likes.
#[derive(Debug)]
pub struct RawMember {
    endpoint: Endpoint,
}

impl RawMember {
    /// The member whose key is in the (stopped) home `home`.
    pub async fn from_home(home: &Path) -> RawMember {
        let key = errand_pairing::identity::load_or_create(&home.join("device.key"))
            .expect("read the home's key");
        RawMember {
            endpoint: raw_endpoint(key).await,
        }
    }

    /// Connects to device `peer` at one of `addrs` (socket addresses as `errand devices`
    /// lists them), says hello as an honest peer starts, writes `frames` (until the peer stops
    /// taking them), and returns the application code the peer closed the connection with.
    /// The receiving half stays open meanwhile, so the peer can answer while it still talks
    /// to us. Everything, connecting included, happens within `wait`; a connection that
    /// cannot be made is tried again, [`CONNECT_TRIES`] times in all (a loaded machine can
    /// fail a handshake), and an error says what happened instead of a close.
    pub async fn send(
        &self,
        peer: &str,
        addrs: &[String],
        frames: &[Vec<u8>],
        wait: Duration,
    ) -> Result<u64, String> {
        let id: EndpointId = peer.parse().expect("a device id");
        let mut addr = EndpointAddr::new(id);
        for a in addrs {
            addr = addr.with_ip_addr(a.parse().expect("a socket address"));
        }
        let attempt = async {
            let mut failures = Vec::new();
            let mut opened = None;
            while opened.is_none() && failures.len() < CONNECT_TRIES {
                match self.endpoint.connect(addr.clone(), SYNC_ALPN).await {
                    Ok(conn) => match conn.open_bi().await {
                        Ok(streams) => opened = Some((conn, streams)),
                        Err(e) => failures.push(format!("opening a stream: {e}")),
                    },
                    Err(e) => failures.push(format!("connecting: {e}")),
                }
            }
            // The receiving half stays open until the end: dropped, it would stop the peer's
            // sending, and the peer would end the session for that instead.
            let Some((conn, (mut send, _recv))) = opened else {
                return Err(format!("no connection: {failures:?}"));
            };
            let hello = Msg::Hello {
                version: PROTOCOL_VERSION,
                digest: Digest::default(),
                docs: 0,
            };
            if wire::write_frame(&mut send, &frame(&hello)).await.is_ok() {
                for f in frames {
                    if wire::write_frame(&mut send, f).await.is_err() {
                        break;
                    }
                }
            }
            match conn.closed().await {
                ConnectionError::ApplicationClosed(close) => Ok(close.error_code.into_inner()),
                other => Err(format!("closed with {other} (after {failures:?})")),
            }
        };
        tokio::time::timeout(wait, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no close within {wait:?}")))
    }

    /// Closes the endpoint.
    pub async fn close(self) {
        self.endpoint.close().await;
    }
}

/// Writes into document `doc` of the (stopped) home `home`, as device `device`, a map nested
/// `depth` levels deep under the key `deep`: a valid document that anything recursing over
/// its values cannot walk.
///
/// Members' nodes refuse the change (nobody owns the root of a thread after its first
/// change); the writer's own home keeps it, which is where the depth bound is tested.
pub fn write_deep_nesting(home: &Path, device: &str, doc: &str, depth: usize) {
    let repo = own_repo(home);
    assert_eq!(repo.device().to_string(), device, "the home's own key");
    let doc = DocId::parse(doc).expect("a document id");
    repo.change(&doc, "nested deep", |tx| {
        let mut obj = tx.put_object(ROOT, "deep", ObjType::Map)?;
        for _ in 1..depth {
            obj = tx.put_object(&obj, "deeper", ObjType::Map)?;
        }
        Ok(())
    })
    .expect("write the nested maps");
}

/// The repo of a stopped home, opened with the home's own key the way a compromised app
/// would: it signs what it writes as that device, and believes anything it receives.
pub fn own_repo(home: &Path) -> Repo {
    let key = errand_pairing::identity::load_or_create(&home.join("device.key"))
        .expect("read the home's key");
    let store = Arc::new(Store::open(&home.join("errand.redb")).expect("open the home's store"));
    Repo::new(store, key, Arc::new(FixedAuthors::anyone(Role::Desktop))).with_own_limits(NO_LIMITS)
}

/// Bounds a hostile member's own repo holds its changes to: none that peers apply to one
/// change, so that it can make the changes they must refuse.
pub const NO_LIMITS: Limits = Limits {
    max_change_bytes: u64::MAX,
    max_ops_per_change: u64::MAX,
    ..Limits::DEFAULT
};

/// Connections [`RawMember::send`] tries before it gives up.
const CONNECT_TRIES: usize = 3;

/// Raw automerge sync message bytes as the payload of an `errand/sync/5` `Sync` message, with
/// no change signatures: what a peer crafting automerge input sends.
pub fn envelope(message: &[u8]) -> Vec<u8> {
    Envelope {
        sigs: Vec::new(),
        message: message.to_vec(),
    }
    .encode()
}

/// What a member that turned hostile writes into the index, with its own key, to take the
/// space over: every write that used to change who belongs (issue 11).
#[derive(Debug, Default, Clone)]
pub struct IndexAttack {
    /// Puts this in the index's `root` field.
    pub root: Option<String>,
    /// Puts this in the index's `space` field.
    pub space: Option<String>,
    /// Deletes these devices' member entries.
    pub delete_members: Vec<String>,
    /// Deletes these devices' revocation entries.
    pub delete_revocations: Vec<String>,
    /// Replaces its own member entry with a desktop certificate it signed itself.
    pub self_certify_desktop: bool,
    /// Signs revocations of these devices, dated 0.
    pub revoke_at_zero: Vec<String>,
}

/// Carries out `attack` in the index of the (stopped) home `home`, as its own device and with
/// its own key, as one ordinary change that syncs like any other.
pub fn attack_index(home: &Path, attack: &IndexAttack) {
    let key =
        errand_pairing::identity::load_or_create(&home.join("device.key")).expect("the home's key");
    let me: DeviceId = key.public();
    let store = Arc::new(Store::open(&home.join("errand.redb")).expect("open the home's store"));
    let space: SpaceId = String::from_utf8(
        store
            .meta(trust::META_SPACE)
            .expect("read the space")
            .expect("a paired home"),
    )
    .expect("utf-8")
    .parse()
    .expect("a space id");
    drop(store);
    let repo = own_repo(home);
    let own = trust::member_entry(&Certificate::sign(
        &key,
        space,
        me,
        "boss",
        Role::Desktop,
        1,
    ));
    let revocations: Vec<index::RevocationEntry> = attack
        .revoke_at_zero
        .iter()
        .map(|d| {
            let device = d.parse().expect("a device id");
            trust::revocation_entry(&Revocation::sign(&key, space, device, 0))
        })
        .collect();
    repo.change(&DocId::index(), "taking over", |tx| {
        if let Some(root) = &attack.root {
            tx.put(ROOT, "root", root.as_str())?;
        }
        if let Some(space) = &attack.space {
            tx.put(ROOT, "space", space.as_str())?;
        }
        let members = tx.get(ROOT, "members")?.expect("members").1;
        for d in &attack.delete_members {
            tx.delete(&members, d.as_str())?;
        }
        let revoked = tx.get(ROOT, "revoked")?.expect("revoked").1;
        for d in &attack.delete_revocations {
            tx.delete(&revoked, d.as_str())?;
        }
        if attack.self_certify_desktop {
            index::put_member(tx, &own)?;
        }
        for r in &revocations {
            index::put_revocation(tx, r)?;
        }
        Ok(())
    })
    .expect("write the attack");
}

/// A tiny deterministic generator, so that a failing seed reproduces.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn step(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.step() % n.max(1) as u64) as usize
    }

    /// A number that is often at an edge: 0, 1, a power of two, or the top of a width.
    fn edgy(&mut self) -> u64 {
        const EDGES: [u64; 12] = [
            0,
            1,
            2,
            7,
            10,
            255,
            1 << 16,
            1 << 31,
            u32::MAX as u64,
            1 << 40,
            i64::MAX as u64,
            u64::MAX,
        ];
        if self.step().is_multiple_of(3) {
            self.step() >> (self.step() % 64)
        } else {
            EDGES[self.below(EDGES.len())]
        }
    }
}

fn write_uleb(out: &mut Vec<u8>, mut n: u64) {
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

/// The fields of a sync message, to mutate one at a time and write back, lies included.
#[derive(Debug, Clone)]
struct Fields {
    version: u8,
    heads: Vec<[u8; 32]>,
    needs: Vec<[u8; 32]>,
    haves: Vec<(Vec<[u8; 32]>, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    tail: Vec<u8>,
    /// Added to the count written for heads, needs, haves and changes.
    lies: [u64; 4],
}

impl Fields {
    fn decode(bytes: &[u8]) -> Option<Fields> {
        let m = automerge::sync::Message::decode(bytes).ok()?;
        let hashes = |h: &[automerge::ChangeHash]| h.iter().map(|h| h.0).collect::<Vec<_>>();
        Some(Fields {
            version: bytes[0],
            heads: hashes(&m.heads),
            needs: hashes(&m.need),
            haves: m
                .have
                .iter()
                .map(|h| (hashes(&h.last_sync), h.bloom.to_bytes()))
                .collect(),
            changes: m.changes.iter().map(<[u8]>::to_vec).collect(),
            tail: Vec::new(),
            lies: [0; 4],
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        let count = |out: &mut Vec<u8>, n: usize, lie: u64| {
            write_uleb(out, (n as u64).wrapping_add(lie));
        };
        count(&mut out, self.heads.len(), self.lies[0]);
        self.heads.iter().for_each(|h| out.extend_from_slice(h));
        count(&mut out, self.needs.len(), self.lies[1]);
        self.needs.iter().for_each(|h| out.extend_from_slice(h));
        count(&mut out, self.haves.len(), self.lies[2]);
        for (last_sync, bloom) in &self.haves {
            count(&mut out, last_sync.len(), 0);
            last_sync.iter().for_each(|h| out.extend_from_slice(h));
            write_uleb(&mut out, bloom.len() as u64);
            out.extend_from_slice(bloom);
        }
        count(&mut out, self.changes.len(), self.lies[3]);
        for change in &self.changes {
            write_uleb(&mut out, change.len() as u64);
            out.extend_from_slice(change);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Recomputes an automerge chunk's checksum (the first four bytes of the SHA-256 of its type,
/// length and body), so that a mutated chunk gets past the checksum to the code behind it.
fn fix_checksum(chunk: &mut [u8]) {
    use sha2::Digest;
    if chunk.len() < 10 {
        return;
    }
    let hash = sha2::Sha256::digest(&chunk[8..]);
    chunk[4..8].copy_from_slice(&hash[..4]);
}

/// Mutates one field of a valid sync message (or several, now and then): counts that lie,
/// bloom filters with edge-case parameters, extra heads and haves, change chunks with a changed
/// type, length or byte (checksum recomputed), truncation at a field, bytes after the end.
/// Falls back to flipping a byte when `valid` does not decode.
pub fn mutate_sync_message(valid: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let Some(mut f) = Fields::decode(valid) else {
        let mut bytes = valid.to_vec();
        if !bytes.is_empty() {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        return bytes;
    };
    for _ in 0..1 + rng.below(3) / 2 {
        match rng.below(11) {
            0 => f.version = rng.step() as u8,
            1 => f.lies[rng.below(4)] = rng.edgy(),
            2 => {
                let extra = rng.below(3000);
                let hash = [rng.step() as u8; 32];
                if rng.step().is_multiple_of(2) {
                    f.heads.extend(std::iter::repeat_n(hash, extra));
                } else {
                    f.needs.extend(std::iter::repeat_n(hash, extra));
                }
            }
            3 | 4 => {
                let mut bloom = Vec::new();
                for _ in 0..3 {
                    write_uleb(&mut bloom, rng.edgy() & u64::from(u32::MAX));
                }
                bloom.extend((0..rng.below(64)).map(|_| rng.step() as u8));
                let have = (Vec::new(), bloom);
                match f.haves.first_mut() {
                    Some(first) if rng.step().is_multiple_of(2) => *first = have,
                    _ => f.haves.push(have),
                }
            }
            5 => {
                let extra = rng.below(100);
                f.haves
                    .extend(std::iter::repeat_n((Vec::new(), Vec::new()), extra));
            }
            6..=8 => {
                if f.changes.is_empty() {
                    continue;
                }
                let i = rng.below(f.changes.len());
                let chunk = &mut f.changes[i];
                if chunk.len() < 10 {
                    continue;
                }
                match rng.below(3) {
                    0 => chunk[8] = rng.below(5) as u8,
                    1 => {
                        let at = 9 + rng.below(chunk.len() - 9);
                        chunk[at] = rng.step() as u8;
                    }
                    _ => {
                        let at = 9 + rng.below(chunk.len() - 9);
                        let mut number = Vec::new();
                        write_uleb(&mut number, rng.edgy());
                        chunk.splice(at..(at + 1).min(chunk.len()), number);
                    }
                }
                fix_checksum(chunk);
            }
            9 => {
                let encoded = f.encode();
                let cut = rng.below(encoded.len());
                return encoded[..cut].to_vec();
            }
            _ => f
                .tail
                .extend((0..1 + rng.below(8)).map(|_| rng.step() as u8)),
        }
    }
    f.encode()
}

/// Real sync messages between two diverged copies of a document: heads, bloom filters, needs,
/// v1 changes and v2 whole documents. Returns them with the document's saved bytes.
/// The sample's root holds task-like maps written in its first change.
pub fn real_sync_messages() -> Sample {
    // The document is written (and signed) by a repo, as a member's would be; the messages
    // are between two plain automerge copies of it, which sign nothing: a node applies their
    // bytes (that is what is being tested) and then refuses their unsigned changes.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = Arc::new(Store::open(&dir.path().join("db.redb")).expect("a store"));
    let author = Repo::new(
        store,
        iroh::SecretKey::generate(),
        Arc::new(FixedAuthors::anyone(Role::Desktop)),
    );
    author
        .set_space(errand_sync::SpaceId([1; 16]))
        .expect("a space");
    let doc = DocId::new_thread();
    let me = author.device().to_string();
    author
        .create(&doc, "a sample", |tx| {
            thread::create(tx, doc.as_str(), "a sample")
        })
        .expect("a sample document");
    for i in 0..20 {
        let id = format!("t{i}");
        author
            .change(&doc, "a task", |tx| {
                thread::add_task(
                    tx,
                    &thread::NewTask {
                        id: &id,
                        prompt: &format!("task number {i} ").repeat(30),
                        target: &me,
                        created: i,
                    },
                )?;
                thread::add_progress(tx, &id, "under way", i)
            })
            .expect("a sample task");
    }
    let errand_sync::repo::SignedDoc { bytes: saved, sigs } = author
        .save_signed(&doc)
        .expect("save the sample")
        .expect("the sample exists");
    let base = automerge::Automerge::load(&saved).expect("load the sample");
    let (mut a, mut b) = (base.fork(), base.fork());
    for (doc, key) in [(&mut a, "a"), (&mut b, "b")] {
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, key, "only here")
            .expect("a sample sync");
        tx.commit();
    }
    let mut messages = Vec::new();
    let mut fresh = automerge::Automerge::new();
    let (mut sa, mut sb) = (automerge::sync::State::new(), automerge::sync::State::new());
    for _ in 0..10 {
        let to_b = a.generate_sync_message(&mut sa);
        let to_a = b.generate_sync_message(&mut sb);
        if to_b.is_none() && to_a.is_none() {
            break;
        }
        if let Some(m) = to_b {
            messages.push(m.clone().encode());
            b.receive_sync_message(&mut sb, m).expect("a sample sync");
        }
        if let Some(m) = to_a {
            messages.push(m.clone().encode());
            a.receive_sync_message(&mut sa, m).expect("a sample sync");
        }
    }
    // And what a device with nothing receives: the whole document.
    let (mut sa, mut sf) = (automerge::sync::State::new(), automerge::sync::State::new());
    for _ in 0..4 {
        if let Some(m) = fresh.generate_sync_message(&mut sf) {
            a.receive_sync_message(&mut sa, m).expect("a sample sync");
        }
        if let Some(m) = a.generate_sync_message(&mut sa) {
            messages.push(m.clone().encode());
            fresh
                .receive_sync_message(&mut sf, m)
                .expect("a sample sync");
        }
    }
    Sample {
        doc,
        saved,
        sigs,
        messages,
    }
}

/// A signed sample document and real sync messages about it.
#[derive(Debug)]
pub struct Sample {
    pub doc: DocId,
    /// The whole document, and the signatures of its changes, for `Repo::import`.
    pub saved: Vec<u8>,
    pub sigs: Vec<errand_sync::store::ChangeSig>,
    /// Raw automerge sync messages about it (wrap them with [`envelope`] to send).
    pub messages: Vec<Vec<u8>>,
}
