//! When to dial a peer, and which of two connections to keep. Pure: time is passed in.
//!
//! The pauses are short on purpose. A partition between two devices usually ends without
//! either noticing (a laptop lid opens, a phone leaves a lift); what the user sees is how long
//! the next dial waits. A dial that fails costs a handful of packets, so retrying every
//! [`BACKOFF_MAX`] after at most [`DIAL_TIMEOUT`] keeps a healed link found within about two
//! seconds, and both sides dial, so usually sooner.

use std::time::{Duration, Instant};

use crate::ids::DeviceId;

/// How long one dial attempt may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(1500);
/// The first pause after a failed dial, and the pause after a connection ends.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest pause between two dials of an unreachable peer.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Two connections between the same devices registered closer together than this were dialled
/// at the same time by both; further apart, the older one is presumed dead.
pub const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(2);

/// The dial schedule of one peer.
#[derive(Clone, Debug)]
pub struct Redial {
    backoff: Duration,
    /// When to dial next; `None` while connected or dialling.
    next: Option<Instant>,
}

impl Redial {
    /// A peer to dial now.
    pub fn new(now: Instant) -> Redial {
        Redial {
            backoff: BACKOFF_START,
            next: Some(now),
        }
    }

    /// Whether a dial is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| t <= now)
    }

    /// When the next dial is due, if one is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// A dial starts (or a connection from the peer arrived): nothing to schedule meanwhile.
    pub fn dialling(&mut self) {
        self.next = None;
    }

    /// The dial failed. `jitter` in `0.0..1.0` spreads retries so two devices do not dial in
    /// lock step.
    pub fn failed(&mut self, now: Instant, jitter: f64) {
        let pause = self.backoff.mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0);
        self.next = Some(now + pause);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// A connection is up: no dialling until it ends.
    pub fn connected(&mut self) {
        self.backoff = BACKOFF_START;
        self.next = None;
    }

    /// The connection ended: dial again after a short pause, so that two devices resolving a
    /// duplicate connection do not redial each other in a tight loop.
    pub fn disconnected(&mut self, now: Instant) {
        self.next = Some(now + BACKOFF_START);
    }

    /// Something suggests the peer is reachable now (a new address, a user asking to sync):
    /// dial at once instead of after the pause.
    pub fn poke(&mut self, now: Instant) {
        if let Some(t) = self.next.as_mut() {
            *t = (*t).min(now);
        }
        self.backoff = BACKOFF_START;
    }
}

/// Which of two live connections to the same peer to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Old,
    New,
}

/// A connection: who dialled it, and how long ago the one held was registered.
///
/// Of two connections made at the same time, the one dialled by the device with the smaller
/// id wins, on both ends alike. But a device dials only when it holds no connection to the
/// peer, so a new connection arriving well after the one held means the held one is dead on
/// the other side (the peer restarted, say): the new one wins then, rather than waiting out the
/// idle timeout.
pub fn resolve_duplicate(
    me: DeviceId,
    peer: DeviceId,
    old_dialled_by_me: bool,
    old_age: Duration,
    new_dialled_by_me: bool,
) -> Keep {
    let preferred = me.min(peer);
    let dialer = |by_me: bool| if by_me { me } else { peer };
    let old_preferred = dialer(old_dialled_by_me) == preferred;
    let new_preferred = dialer(new_dialled_by_me) == preferred;
    if old_preferred && !new_preferred && old_age < SIMULTANEOUS_DIAL {
        Keep::Old
    } else {
        Keep::New
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failed_dials_back_off_up_to_the_cap_and_a_poke_or_a_connection_resets_it() {
        let t0 = Instant::now();
        let mut r = Redial::new(t0);
        assert!(r.due(t0));
        r.dialling();
        assert!(!r.due(t0 + Duration::from_secs(100)));
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            r.failed(now, 0.5);
            let next = r.poll_timeout().unwrap();
            pauses.push(next - now);
            now = next;
            r.dialling();
        }
        assert_eq!(pauses[0], BACKOFF_START);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
        // The worst wait from a healed link to the next dial's end stays near two seconds.
        assert!(BACKOFF_MAX.mul_f64(1.25) + DIAL_TIMEOUT <= Duration::from_millis(2200));
        r.failed(now, 0.0);
        r.poke(now);
        assert!(r.due(now));
        r.connected();
        assert_eq!(r.poll_timeout(), None);
        r.disconnected(now);
        assert_eq!(r.poll_timeout(), Some(now + BACKOFF_START));
    }

    #[test]
    fn both_ends_keep_the_same_one_of_two_simultaneous_connections() {
        let a = iroh::SecretKey::generate().public();
        let b = iroh::SecretKey::generate().public();
        let fresh = Duration::from_millis(10);
        // Each side holds the connection it dialled and receives the peer's.
        let at_a = resolve_duplicate(a, b, true, fresh, false);
        let at_b = resolve_duplicate(b, a, true, fresh, false);
        // The connection dialled by the smaller id survives on both.
        let kept_by_a_is_as = at_a == Keep::Old;
        let kept_by_b_is_as = at_b == Keep::New;
        assert_eq!(kept_by_a_is_as, kept_by_b_is_as);
        assert_eq!(kept_by_a_is_as, a < b);
        // A connection arriving long after the held one replaces it (the peer restarted).
        let stale = SIMULTANEOUS_DIAL + Duration::from_millis(1);
        assert_eq!(resolve_duplicate(a, b, a < b, stale, a >= b), Keep::New);
    }
}
