//! One-time pairing tickets: how a new device learns where to dial and what secret to prove.
//!
//! A ticket carries the host device's id and addresses, the space, a random ticket id, a 256-bit
//! secret, an expiry and the role the host will give the joiner (the host decides it, and keeps
//! its own record of it; the ticket's copy only lets the joiner show it before dialling). It travels as text (pasted, or read from a QR code), so the text form is
//! designed for that:
//!
//! * `ERRAND1` followed by RFC 4648 base32 in upper case without padding. Every character is in
//!   the QR alphanumeric set, which packs 5.5 bits per character instead of 8, so the QR code
//!   stays small enough for a phone camera to read from a terminal.
//! * A compact binary body instead of JSON, for the same reason.
//! * A 4-byte SHA-256 checksum at the end, so a mistyped or partially copied ticket is reported
//!   as damaged instead of making the device dial a wrong address or fail the proof.
//!
//! Binary layout (version 2), all integers big-endian:
//!
//! ```text
//! version u8 = 2 | host [32] | space [16] | id [16] | secret [32] | expires_at u64
//! | addr count u8 (<= 16) | per addr: tag u8 (4 or 6), ip [4 or 16], port u16
//! | relay flag u8 (0 or 1) | if 1: relay len u16 (<= 256), relay utf-8
//! | role u8 (1 desktop, 2 phone, 3 viewer)
//! | checksum [4] = SHA-256(everything before)[..4]
//! ```
//!
//! Version 1 had no role byte; such tickets are refused as an unknown version (they live
//! minutes, and the host that issued one would let the joiner choose its role).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use data_encoding::BASE32_NOPAD;
use errand_sync::{DeviceId, Role, SpaceId};
use rand::Rng;
use sha2::{Digest, Sha256};

/// Text prefix of every ticket. The digit names the text format, so a future format can be told
/// apart before decoding anything.
pub const PREFIX: &str = "ERRAND1";

/// Version byte of the binary body this code writes.
const VERSION: u8 = 2;
/// Most addresses a ticket carries; more would only make the QR code unreadable.
pub const MAX_ADDRS: usize = 16;
/// Longest relay URL a ticket carries, in bytes.
pub const MAX_RELAY_LEN: usize = 256;
const CHECKSUM_LEN: usize = 4;
const TAG_V4: u8 = 4;
const TAG_V6: u8 = 6;

/// Why a ticket's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not an errand pairing ticket: it must start with {PREFIX}")]
    WrongPrefix,
    #[error("ticket contains characters that do not belong in a ticket: copy it again")]
    BadEncoding,
    #[error("ticket is incomplete (truncated): copy the whole ticket again")]
    Truncated,
    #[error("ticket has {0} unexpected extra bytes at the end: copy exactly the ticket")]
    TrailingBytes(usize),
    #[error("ticket is damaged (checksum mismatch): copy it again")]
    ChecksumMismatch,
    #[error("ticket format version {0} is not supported: update errand on this device")]
    UnknownVersion(u8),
    #[error("ticket names a host key that is not a valid device key: create a new ticket")]
    InvalidHostKey,
    #[error("ticket lists {0} addresses but at most {MAX_ADDRS} are allowed: create a new ticket")]
    TooManyAddrs(usize),
    #[error("ticket contains an address of unknown kind {0}: create a new ticket")]
    BadAddress(u8),
    #[error("ticket's relay field is malformed: create a new ticket")]
    BadRelay,
    #[error("ticket's relay URL is {0} bytes, at most {MAX_RELAY_LEN} are allowed")]
    RelayTooLong(usize),
    #[error("ticket names an unknown role {0}: update errand on this device")]
    BadRole(u8),
}

/// A one-time invitation to join `space` by dialling `host`.
///
/// `Debug` never shows the secret, so a ticket can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The member device that issued the ticket and will admit the joiner.
    pub host: DeviceId,
    /// Direct addresses of the host (at most [`MAX_ADDRS`] are encoded).
    pub addrs: Vec<SocketAddr>,
    /// The host's relay URL, if it has one (encoded only up to [`MAX_RELAY_LEN`] bytes).
    pub relay: Option<String>,
    /// The space the joiner will become a member of.
    pub space: SpaceId,
    /// Random id; lets the host find the ticket and spend it exactly once.
    pub id: [u8; 16],
    /// The shared secret the joiner proves knowledge of. Never sent over the network.
    pub secret: [u8; 32],
    /// Unix time (seconds) after which the host refuses the ticket.
    pub expires_at: u64,
    /// The role the joiner gets: chosen by the host when it issued the ticket.
    pub role: Role,
}

impl Ticket {
    /// Creates a ticket with a fresh random id and secret, valid for `ttl` from `now_unix`.
    ///
    /// Addresses beyond [`MAX_ADDRS`] are dropped and a relay URL longer than [`MAX_RELAY_LEN`]
    /// bytes is left out (with a warning), so the ticket always round-trips through its text.
    /// The randomness comes from the thread-local CSPRNG, which is seeded from the OS.
    pub fn new(
        host: DeviceId,
        mut addrs: Vec<SocketAddr>,
        relay: Option<String>,
        space: SpaceId,
        role: Role,
        ttl: Duration,
        now_unix: u64,
    ) -> Ticket {
        if addrs.len() > MAX_ADDRS {
            tracing::warn!(
                count = addrs.len(),
                "ticket keeps only the first {MAX_ADDRS} addresses"
            );
            addrs.truncate(MAX_ADDRS);
        }
        let relay = relay.filter(|r| {
            let fits = r.len() <= MAX_RELAY_LEN;
            if !fits {
                tracing::warn!(len = r.len(), "relay URL too long for a ticket, left out");
            }
            fits
        });
        let mut rng = rand::rng();
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        rng.fill(&mut id);
        rng.fill(&mut secret);
        Ticket {
            host,
            addrs,
            relay,
            space,
            id,
            secret,
            expires_at: now_unix.saturating_add(ttl.as_secs()),
            role,
        }
    }

    /// Whether the ticket is no longer valid at `now_unix`.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.expires_at
    }

    /// The text form: `ERRAND1` + upper-case base32 of the binary body.
    pub fn to_text(&self) -> String {
        let mut text = String::from(PREFIX);
        text.push_str(&BASE32_NOPAD.encode(&self.to_bytes()));
        text
    }

    /// Parses the text form. Whitespace (around the ticket or where a chat app wrapped it) and
    /// lower case are accepted, because tickets are pasted by hand and some apps change case.
    pub fn from_text(text: &str) -> Result<Ticket, TicketError> {
        let text: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let body = text.strip_prefix(PREFIX).ok_or(TicketError::WrongPrefix)?;
        let bytes = BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| TicketError::BadEncoding)?;
        Self::from_bytes(&bytes)
    }

    /// The binary body including the checksum.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.push(VERSION);
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(&self.space.0);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.secret);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        let addrs = &self.addrs[..self.addrs.len().min(MAX_ADDRS)];
        // Cannot truncate: MAX_ADDRS fits in a u8.
        out.push(addrs.len() as u8);
        for addr in addrs {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(TAG_V4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(TAG_V6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&addr.port().to_be_bytes());
        }
        match self.relay.as_deref().filter(|r| r.len() <= MAX_RELAY_LEN) {
            Some(relay) => {
                out.push(1);
                // Cannot truncate: MAX_RELAY_LEN fits in a u16.
                out.extend_from_slice(&(relay.len() as u16).to_be_bytes());
                out.extend_from_slice(relay.as_bytes());
            }
            None => out.push(0),
        }
        out.push(role_byte(self.role));
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses the binary body.
    ///
    /// First the layout is walked (so a short or overlong body is reported as truncated or
    /// trailing rather than as a checksum failure), then the checksum is checked, and only then
    /// are the field contents interpreted, so random damage is reported as damage.
    fn from_bytes(data: &[u8]) -> Result<Ticket, TicketError> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(TicketError::UnknownVersion(version));
        }
        let host: [u8; 32] = r.array()?;
        let space: [u8; 16] = r.array()?;
        let id: [u8; 16] = r.array()?;
        let secret: [u8; 32] = r.array()?;
        let expires_at = u64::from_be_bytes(r.array()?);
        let count = usize::from(r.u8()?);
        if count > MAX_ADDRS {
            return Err(TicketError::TooManyAddrs(count));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match r.u8()? {
                TAG_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                TAG_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                other => return Err(TicketError::BadAddress(other)),
            };
            let port = u16::from_be_bytes(r.array()?);
            addrs.push(SocketAddr::new(ip, port));
        }
        let relay_bytes = match r.u8()? {
            0 => None,
            1 => {
                let len = usize::from(u16::from_be_bytes(r.array()?));
                if len > MAX_RELAY_LEN {
                    return Err(TicketError::RelayTooLong(len));
                }
                Some(r.take(len)?)
            }
            _ => return Err(TicketError::BadRelay),
        };
        let role = r.u8()?;
        let signed_len = r.pos;
        let sum: [u8; CHECKSUM_LEN] = r.array()?;
        let rest = data.len() - r.pos;
        if rest != 0 {
            return Err(TicketError::TrailingBytes(rest));
        }
        if checksum(&data[..signed_len]) != sum {
            return Err(TicketError::ChecksumMismatch);
        }

        let host = DeviceId::from_bytes(&host).map_err(|_| TicketError::InvalidHostKey)?;
        let relay = relay_bytes
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| TicketError::BadRelay))
            .transpose()?;
        let role = role_from_byte(role).ok_or(TicketError::BadRole(role))?;
        Ok(Ticket {
            host,
            addrs,
            relay,
            space: SpaceId(space),
            id,
            secret,
            expires_at,
            role,
        })
    }
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Desktop => 1,
        Role::Phone => 2,
        Role::Viewer => 3,
    }
}

fn role_from_byte(b: u8) -> Option<Role> {
    match b {
        1 => Some(Role::Desktop),
        2 => Some(Role::Phone),
        3 => Some(Role::Viewer),
        _ => None,
    }
}

/// First four bytes of SHA-256: enough to catch copy errors, not meant as authentication
/// (the host checks the secret; the joiner checks the host key by dialling it).
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(data);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// A bounds-checked cursor: every read that runs past the end is `Truncated`, never a panic.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        let end = self.pos.checked_add(n).ok_or(TicketError::Truncated)?;
        let slice = self.data.get(self.pos..end).ok_or(TicketError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.array::<1>()?[0])
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::from_text(s)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("host", &self.host)
            .field("addrs", &self.addrs)
            .field("relay", &self.relay)
            .field("space", &self.space)
            .field("id", &errand_sync::ids::hex(&self.id))
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("role", &self.role)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sample() -> Ticket {
        let host = iroh::SecretKey::generate().public();
        Ticket::new(
            host,
            vec![
                "192.168.1.20:4433".parse().unwrap(),
                "[fe80::1]:4433".parse().unwrap(),
                "127.0.0.1:1".parse().unwrap(),
            ],
            Some("https://relay.example.org./".to_owned()),
            SpaceId::random(),
            Role::Viewer,
            Duration::from_secs(600),
            1_700_000_000,
        )
    }

    /// Re-encodes a modified body with a fresh checksum, to reach the checks behind it.
    fn reseal(mut body: Vec<u8>) -> String {
        body.truncate(body.len() - CHECKSUM_LEN);
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        format!("{PREFIX}{}", BASE32_NOPAD.encode(&body))
    }

    fn body(t: &Ticket) -> Vec<u8> {
        t.to_bytes()
    }

    #[test]
    fn round_trips_through_text() {
        let t = sample();
        let text = t.to_text();
        assert!(text.starts_with(PREFIX));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{text}"
        );
        assert_eq!(Ticket::from_text(&text).unwrap(), t);
        assert_eq!(text.parse::<Ticket>().unwrap(), t);
        assert_eq!(t.to_string(), text);
        assert_eq!(t.expires_at, 1_700_000_600);
    }

    #[test]
    fn round_trips_without_addrs_or_relay() {
        let mut t = sample();
        t.addrs.clear();
        t.relay = None;
        assert_eq!(Ticket::from_text(&t.to_text()).unwrap(), t);
    }

    #[test]
    fn accepts_whitespace_and_lower_case() {
        let t = sample();
        let text = format!("  \n{}\t\n", t.to_text().to_ascii_lowercase());
        assert_eq!(Ticket::from_text(&text).unwrap(), t);
        let wrapped = t.to_text();
        let (a, b) = wrapped.split_at(40);
        assert_eq!(Ticket::from_text(&format!("{a}\r\n {b}")).unwrap(), t);
    }

    #[test]
    fn new_ticket_has_fresh_randomness() {
        let a = sample();
        let b = sample();
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn new_clamps_addrs_and_relay() {
        let host = iroh::SecretKey::generate().public();
        let addrs = (0..40u16)
            .map(|p| SocketAddr::from(([10, 0, 0, 1], p)))
            .collect();
        let t = Ticket::new(
            host,
            addrs,
            Some("x".repeat(MAX_RELAY_LEN + 1)),
            SpaceId::random(),
            Role::Phone,
            Duration::from_secs(60),
            0,
        );
        assert_eq!(t.addrs.len(), MAX_ADDRS);
        assert_eq!(t.relay, None);
        assert_eq!(Ticket::from_text(&t.to_text()).unwrap(), t);
    }

    #[test]
    fn expiry() {
        let t = sample();
        assert!(!t.is_expired(1_700_000_000));
        assert!(!t.is_expired(1_700_000_599));
        assert!(t.is_expired(1_700_000_600));
        assert!(t.is_expired(u64::MAX));
    }

    #[test]
    fn debug_redacts_secret() {
        let t = sample();
        let dbg = format!("{t:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&errand_sync::ids::hex(&t.secret)));
        assert!(!dbg.contains(&format!("{:?}", t.secret)));
        assert!(!dbg.contains(&t.to_text()));
    }

    #[test]
    fn rejects_each_kind_of_bad_input_distinctly() {
        let t = sample();
        let text = t.to_text();
        let encoded = &text[PREFIX.len()..];

        assert_eq!(Ticket::from_text(""), Err(TicketError::WrongPrefix));
        assert_eq!(
            Ticket::from_text(&format!("ERRAND2{encoded}")),
            Err(TicketError::WrongPrefix)
        );
        assert_eq!(
            Ticket::from_text(&format!("{PREFIX}{}!", &encoded[..encoded.len() - 1])),
            Err(TicketError::BadEncoding)
        );
        let b = body(&t);
        let short = format!("{PREFIX}{}", BASE32_NOPAD.encode(&b[..b.len() - 5]));
        assert_eq!(Ticket::from_text(&short), Err(TicketError::Truncated));
        assert_eq!(Ticket::from_text(PREFIX), Err(TicketError::Truncated));
        assert_eq!(
            Ticket::from_text(&format!("{text}AAAAAAAA")),
            Err(TicketError::TrailingBytes(5))
        );

        // Flip one bit in the secret: only the checksum notices.
        let mut b = body(&t);
        b[1 + 32 + 16 + 16] ^= 1;
        let damaged = format!("{PREFIX}{}", BASE32_NOPAD.encode(&b));
        let err = Ticket::from_text(&damaged).unwrap_err();
        assert_eq!(err, TicketError::ChecksumMismatch);
        assert_eq!(
            err.to_string(),
            "ticket is damaged (checksum mismatch): copy it again"
        );

        let mut b = body(&t);
        b[0] = 9;
        assert_eq!(
            Ticket::from_text(&reseal(b)),
            Err(TicketError::UnknownVersion(9))
        );

        // y = 2 is not the encoding of a curve point.
        let mut b = body(&t);
        b[1..33].copy_from_slice(&{
            let mut k = [0u8; 32];
            k[0] = 2;
            k
        });
        let bad_key = reseal(b);
        assert!(
            DeviceId::from_bytes(&{
                let mut k = [0u8; 32];
                k[0] = 2;
                k
            })
            .is_err()
        );
        assert_eq!(
            Ticket::from_text(&bad_key),
            Err(TicketError::InvalidHostKey)
        );

        let count_at = 1 + 32 + 16 + 16 + 32 + 8;
        let mut b = body(&t);
        b[count_at] = 17;
        assert_eq!(
            Ticket::from_text(&reseal(b)),
            Err(TicketError::TooManyAddrs(17))
        );

        let mut b = body(&t);
        b[count_at + 1] = 5;
        assert_eq!(
            Ticket::from_text(&reseal(b)),
            Err(TicketError::BadAddress(5))
        );
    }

    #[test]
    fn rejects_bad_relay_fields() {
        let mut t = sample();
        t.addrs.clear();
        t.relay = Some("ab".to_owned());
        let flag_at = 1 + 32 + 16 + 16 + 32 + 8 + 1;

        let mut b = body(&t);
        b[flag_at] = 2;
        assert_eq!(Ticket::from_text(&reseal(b)), Err(TicketError::BadRelay));

        let mut b = body(&t);
        b[flag_at + 1..flag_at + 3].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(
            Ticket::from_text(&reseal(b)),
            Err(TicketError::RelayTooLong(300))
        );

        let mut b = body(&t);
        b[flag_at + 3] = 0xff;
        assert_eq!(Ticket::from_text(&reseal(b)), Err(TicketError::BadRelay));
    }

    #[test]
    fn carries_the_role_the_host_chose() {
        for role in [Role::Desktop, Role::Phone, Role::Viewer] {
            let mut t = sample();
            t.role = role;
            assert_eq!(Ticket::from_text(&t.to_text()).unwrap().role, role);
        }
        // The role byte sits just before the checksum; an unknown one is refused.
        let b = body(&sample());
        let role_at = b.len() - CHECKSUM_LEN - 1;
        assert_eq!(b[role_at], 3);
        let mut bad = b.clone();
        bad[role_at] = 9;
        assert_eq!(
            Ticket::from_text(&reseal(bad)),
            Err(TicketError::BadRole(9))
        );
        // A version 1 ticket (no role: its joiner chose) is not accepted.
        let mut v1 = b;
        v1.remove(role_at);
        v1[0] = 1;
        assert_eq!(
            Ticket::from_text(&reseal(v1)),
            Err(TicketError::UnknownVersion(1))
        );
    }

    #[test]
    fn errors_are_distinct() {
        let all = [
            TicketError::WrongPrefix,
            TicketError::BadEncoding,
            TicketError::Truncated,
            TicketError::TrailingBytes(1),
            TicketError::ChecksumMismatch,
            TicketError::UnknownVersion(2),
            TicketError::InvalidHostKey,
            TicketError::TooManyAddrs(17),
            TicketError::BadAddress(5),
            TicketError::BadRelay,
            TicketError::RelayTooLong(300),
            TicketError::BadRole(9),
        ];
        let messages: std::collections::HashSet<String> =
            all.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), all.len());
    }

    #[test]
    fn never_panics_on_damaged_input() {
        let t = sample();
        let text = t.to_text();

        // Every truncation of the text, and of the binary body re-encoded.
        for i in 0..text.len() {
            let r = Ticket::from_text(&text[..i]);
            assert!(r.is_err(), "prefix of length {i} parsed");
        }
        let b = body(&t);
        for i in 0..b.len() {
            let s = format!("{PREFIX}{}", BASE32_NOPAD.encode(&b[..i]));
            assert!(Ticket::from_text(&s).is_err());
        }

        let mut rng = StdRng::seed_from_u64(0x5eed);
        let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abc01=! \n\u{e9}"
            .chars()
            .collect();

        // Random edits of the text.
        for _ in 0..3000 {
            let mut chars: Vec<char> = text.chars().collect();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..chars.len());
                match rng.random_range(0..3) {
                    0 => chars[i] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        chars.remove(i);
                    }
                    _ => chars.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let s: String = chars.into_iter().collect();
            let _ = Ticket::from_text(&s);
        }

        // Random byte edits with a valid checksum, to exercise the parsing behind it.
        for _ in 0..3000 {
            let mut b = body(&t);
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len() - CHECKSUM_LEN);
                b[i] = rng.random();
            }
            if rng.random_bool(0.3) {
                let cut = rng.random_range(CHECKSUM_LEN..b.len());
                b.truncate(cut);
            }
            let _ = Ticket::from_text(&reseal(b));
        }

        // Random bytes of random length.
        for _ in 0..2000 {
            let len = rng.random_range(0..300);
            let mut b = vec![0u8; len];
            rng.fill(&mut b[..]);
            if let Some(v) = b.first_mut() {
                *v = VERSION;
            }
            let _ = Ticket::from_text(&format!("{PREFIX}{}", BASE32_NOPAD.encode(&b)));
        }
    }
}
