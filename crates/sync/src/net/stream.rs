//! One session's stream: the loop that moves frames between the QUIC stream and the
//! [`Session`], feeds it the repo's changes and its timers, and acts on the events it asks for;
//! and the writer task that owns the send half.

use std::time::{Duration, Instant};

use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use super::{
    CLOSE_LOCAL_FAILURE, CLOSE_SILENT, IDLE_FORGET, NetEvent, READ_BATCH, READ_BATCH_BYTES,
    Replicator, SEND_QUEUE, WRITE_BATCH, lock,
};
use crate::replication::session::{Event, Input};
use crate::replication::{Msg, Session};
use crate::schema::DocId;
use crate::store::Commit;
use crate::wire::{self, MAX_FRAME};
use in_flight::InFlight;

impl Replicator {
    /// Runs one session over the connection's stream until either side ends it.
    pub(super) async fn drive(
        &self,
        conn: &Connection,
        opener: bool,
        send: SendStream,
        mut recv: RecvStream,
    ) {
        let peer = conn.remote_id();
        let repo = self.0.repo.clone();
        let mut docs = repo.docs();
        let mut session = Session::with_quotas(peer, opener, Instant::now(), repo.quotas());
        session.start(&docs);

        let (tx, rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let (in_flight, mut queued) = InFlight::new();
        let max_in_flight = repo.quotas().max_in_flight_bytes;
        let writer = tokio::spawn(write_frames(send, rx, in_flight.clone()));
        let mut frames = wire::FrameReader::new(MAX_FRAME);
        let mut encoder = wire::MessageEncoder::default();
        let mut decoder = wire::MessageDecoder::default();
        let mut changes = repo.subscribe();
        let mut last_traffic = Instant::now();
        // Packets received from the peer when last looked: growth while the session awaits an
        // answer tells it the link works (QUIC acknowledges what we send even while the
        // peer's session is busy).
        let mut rx_seen = conn.stats().udp_rx.datagrams;
        let mut described = Instant::now();

        'session: loop {
            if !self.apply_events(conn, &mut session) {
                writer.abort();
                return;
            }
            // Only the session of the connection kept for this peer speaks for it: one that
            // lost to a duplicate runs on until it sees its connection closed, and what it
            // wrote last would otherwise stand (a stale "not in sync", or a stale "in sync")
            // while the kept session, quiet, writes nothing.
            if self.is_current(conn) {
                let mut views = lock(&self.0.views);
                let view = views.entry(peer).or_default();
                view.digest = session.peer_digest();
                view.idle = session.in_sync(&docs);
            }
            self.0.progress.send_modify(|n| *n += 1);
            let now = Instant::now();
            // How the session stands, a line a second at most, for `ERRAND_LOG=errand_sync=debug`.
            if now >= described + Duration::from_secs(1) {
                described = now;
                let stats = conn.stats();
                debug!(
                    %peer,
                    opener,
                    datagrams_in = stats.udp_rx.datagrams,
                    datagrams_out = stats.udp_tx.datagrams,
                    writer_holds = *queued.borrow(),
                    "session: {}",
                    session.describe(now)
                );
            }
            let timer = session.poll_timeout(now, &docs);
            let wants = session.wants_transmit(now, &docs);
            let room = in_flight::room(*queued.borrow_and_update(), max_in_flight);
            let forget_at = last_traffic + IDLE_FORGET;
            tokio::select! {
                permit = tx.reserve(), if wants && room => {
                    let Ok(mut permit) = permit else { break };
                    let was_awaiting = session.awaiting();
                    // Everything the session has to say now goes to the writer together (a
                    // sync message and the digest after it, say), so that it leaves in one
                    // packet rather than one each.
                    while let Some(msg) = session.poll_transmit(Instant::now(), &mut docs) {
                        let frame = encoder.encode(&msg.encode());
                        in_flight.add(frame.len());
                        permit.send(frame);
                        last_traffic = Instant::now();
                        let room = in_flight::room(*queued.borrow_and_update(), max_in_flight);
                        match tx.try_reserve() {
                            Ok(next) if room => permit = next,
                            _ => break,
                        }
                    }
                    // Packets from before an answer was awaited say nothing about it.
                    if !was_awaiting && session.awaiting() {
                        rx_seen = conn.stats().udp_rx.datagrams;
                    }
                }
                // The peer reads again: the writer has taken bytes off the queue.
                changed = queued.changed(), if wants && !room => {
                    if changed.is_err() {
                        break;
                    }
                }
                frame = frames.next(&mut recv) => {
                    // Frames already here are taken in the same turn. With several sync
                    // messages among them, what they bring is written lazily and made durable
                    // once, before the session next speaks (`Docs::flush`), so they share one
                    // fsync; with one, it is written durably at once, which is quicker than a
                    // lazy write and a flush.
                    let mut batch = vec![frame];
                    let mut bytes_read = batch_bytes(&batch[0]);
                    while batch.len() < READ_BATCH && bytes_read < READ_BATCH_BYTES {
                        let Some(next) = ready_now(frames.next(&mut recv)) else {
                            break;
                        };
                        bytes_read += batch_bytes(&next);
                        batch.push(next);
                    }
                    let mut msgs = Vec::with_capacity(batch.len());
                    let mut ended = false;
                    for frame in batch {
                        let bytes = match frame {
                            Ok(Some(bytes)) => bytes,
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(e @ wire::FrameError::TooLarge(_)) => {
                                writer.abort();
                                return self.misbehaved(conn, format!("bad frame: {e}"));
                            }
                            Err(e) => {
                                debug!(%peer, "stream ended: {e}");
                                ended = true;
                                break;
                            }
                        };
                        last_traffic = Instant::now();
                        let msg = decoder
                            .decode(&bytes, MAX_FRAME)
                            .map_err(|e| e.to_string())
                            .and_then(|b| Msg::decode_owned(b).map_err(|e| e.to_string()));
                        match msg {
                            Ok(msg) => msgs.push(msg),
                            Err(e) => {
                                writer.abort();
                                return self.misbehaved(conn, format!("bad frame: {e}"));
                            }
                        }
                    }
                    rx_seen = conn.stats().udp_rx.datagrams;
                    let syncs = msgs.iter().filter(|m| matches!(m, Msg::Sync { .. })).count();
                    docs.write(if syncs > 1 { Commit::Lazy } else { Commit::Durable });
                    // Whole documents not held here are merged and checked ahead, in
                    // parallel (`Repo::prepare`); the session still takes them in turn.
                    if syncs > 1 {
                        let syncs: Vec<(&DocId, &[u8])> = msgs
                            .iter()
                            .filter_map(|m| match m {
                                Msg::Sync { doc, message } => Some((doc, message.as_slice())),
                                _ => None,
                            })
                            .collect();
                        docs.prepare(&syncs);
                    }
                    for msg in msgs {
                        session.handle(Instant::now(), Input::Message(msg), &mut docs);
                        if session.failed() {
                            break;
                        }
                    }
                    if syncs > 1 {
                        docs.forget_prepared();
                    }
                    if ended {
                        break 'session;
                    }
                }
                changed = changes.recv() => match changed {
                    Ok(c) => session.handle(Instant::now(), Input::Changed(c.doc), &mut docs),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        session.handle(Instant::now(), Input::LostTrack, &mut docs);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = sleep_until(timer) => {
                    let rx = conn.stats().udp_rx.datagrams;
                    // Bytes the writer still holds wait on the peer's flow control, which a
                    // peer slow to read withholds: that is not silence.
                    let writing = *queued.borrow() > 0;
                    if session.awaiting() && (rx != rx_seen || writing) {
                        session.handle(Instant::now(), Input::Alive, &mut docs);
                    }
                    rx_seen = rx;
                    session.handle_timeout(Instant::now(), &docs);
                }
                // An idle stream gives its compression contexts back; the next message starts
                // fresh ones.
                () = tokio::time::sleep_until(forget_at.into()), if encoder.holds_context() => {
                    encoder.forget();
                }
                _ = conn.closed() => break,
            }
        }
        // A session whose connection lost to a duplicate saves nothing at its end: the kept
        // session speaks for this peer now, and what this one knew may be older than what
        // that one has saved (it would overwrite it).
        if !self.lost_to_duplicate(conn) {
            session.close();
        }
        self.apply_events(conn, &mut session);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }

    /// Acts on what the session asked for. Returns false if the peer was dropped.
    fn apply_events(&self, conn: &Connection, session: &mut Session) -> bool {
        let peer = session.peer();
        while let Some(event) = session.poll_event() {
            match event {
                Event::SaveStates(states) => {
                    if lock(&self.0.distrusted).contains(&peer) {
                        continue;
                    }
                    let states: Vec<(String, Vec<u8>)> = states
                        .into_iter()
                        .map(|(d, s)| (d.as_str().to_owned(), s))
                        .collect();
                    if let Err(e) = self
                        .0
                        .repo
                        .store()
                        .set_sync_states(&peer.to_string(), &states)
                    {
                        warn!(%peer, "cannot save sync states: {e}");
                    }
                }
                Event::Synced(doc) => {
                    let _ = self.0.events.send(NetEvent::Synced { peer, doc });
                }
                Event::Shared { doc, heads } => {
                    lock(&self.0.views)
                        .entry(peer)
                        .or_default()
                        .note_shared(doc, heads);
                }
                Event::Misbehaved(reason) => {
                    self.misbehaved(conn, reason);
                    return false;
                }
                Event::Failed(reason) => {
                    warn!(%peer, "ending the connection: {reason}");
                    conn.close(VarInt::from_u32(CLOSE_LOCAL_FAILURE), b"local failure");
                    return false;
                }
                Event::Silent => {
                    info!(%peer, "no answer: dialling a fresh connection");
                    conn.close(VarInt::from_u32(CLOSE_SILENT), b"no answer");
                    return false;
                }
            }
        }
        true
    }
}

/// The payload bytes of a frame read, for bounding a batch.
fn batch_bytes(frame: &Result<Option<Vec<u8>>, wire::FrameError>) -> usize {
    match frame {
        Ok(Some(bytes)) => bytes.len(),
        _ => 0,
    }
}

/// `f`'s output if it is ready without waiting. For cancel-safe futures only: one that is not
/// ready is dropped.
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Owns the send half of the stream: writes frames as the session produces them, and counts
/// each off `in_flight` once written.
async fn write_frames(
    mut send: SendStream,
    mut frames: mpsc::Receiver<Vec<u8>>,
    in_flight: InFlight,
) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        // Frames queued meanwhile are written with this one, in one write: QUIC then packs
        // them into as few packets as their size allows.
        batch.clear();
        let mut taken = 0;
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if frame.len() > MAX_FRAME {
                // The peer would refuse it and drop us: end here instead.
                warn!("a frame of {} bytes is over the limit", frame.len());
                in_flight.clear();
                return;
            }
            taken += frame.len();
            wire::put_frame(&mut batch, &frame);
            if batch.len() < WRITE_BATCH {
                next = frames.try_recv().ok();
            }
        }
        if send.write_all(&batch).await.is_err() {
            // Room again, so that the driver tries to queue, finds the writer gone and ends.
            in_flight.clear();
            return;
        }
        in_flight.written(taken);
    }
    let _ = send.finish();
}

/// The bytes queued for one connection's writer ([`crate::quota::Quotas::max_in_flight_bytes`]).
mod in_flight {
    use std::sync::Arc;

    use tokio::sync::watch;

    /// Bytes of frames handed to the writer task and not yet written to the stream: the
    /// driver adds, the writer takes away, and the driver watches.
    #[derive(Clone)]
    pub(super) struct InFlight(Arc<watch::Sender<usize>>);

    impl InFlight {
        pub(super) fn new() -> (InFlight, watch::Receiver<usize>) {
            let (tx, rx) = watch::channel(0);
            (InFlight(Arc::new(tx)), rx)
        }

        pub(super) fn add(&self, bytes: usize) {
            self.0.send_modify(|queued| *queued += bytes);
        }

        pub(super) fn written(&self, bytes: usize) {
            self.0
                .send_modify(|queued| *queued = queued.saturating_sub(bytes));
        }

        /// The writer is gone: nothing waits any more.
        pub(super) fn clear(&self) {
            self.0.send_replace(0);
        }
    }

    /// Whether another frame may be queued with `queued` bytes waiting: only while fewer than
    /// `max` wait, so at most `max` plus one frame are ever queued.
    pub(super) fn room(queued: usize, max: usize) -> bool {
        queued < max
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn frames_queue_while_fewer_than_the_quota_wait_and_a_write_makes_room() {
            let max = 100;
            let (in_flight, mut queued) = InFlight::new();
            assert!(room(*queued.borrow_and_update(), max));
            in_flight.add(60);
            assert!(room(*queued.borrow_and_update(), max));
            in_flight.add(60);
            assert!(!room(*queued.borrow_and_update(), max), "120 bytes wait");
            let writer = in_flight.clone();
            tokio::spawn(async move { writer.written(60) });
            queued.changed().await.expect("the writer wrote");
            assert_eq!(*queued.borrow_and_update(), 60);
            assert!(room(*queued.borrow(), max));
        }
    }
}
