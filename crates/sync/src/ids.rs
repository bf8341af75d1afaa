//! Identifiers shared by every crate: spaces, documents, devices and roles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The public key of a device; also its iroh endpoint id.
pub type DeviceId = iroh::EndpointId;

/// Error for identifiers that do not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind}: {input:?}")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
}

/// A space: the group of devices that share documents. 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpaceId(pub [u8; 16]);

impl SpaceId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpaceId({self})")
    }
}

impl FromStr for SpaceId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex::<16>(s).map(Self).ok_or_else(|| ParseIdError {
            kind: "space id",
            input: s.to_owned(),
        })
    }
}

/// What a device may do in a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks; can add devices and approve.
    Desktop,
    /// Sends tasks, approves, adds devices.
    Phone,
    /// Reads and syncs only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Desktop => "desktop",
            Role::Phone => "phone",
            Role::Viewer => "viewer",
        }
    }

    /// Whether a device with this role may sign membership certificates.
    pub fn may_add_devices(self) -> bool {
        matches!(self, Role::Desktop | Role::Phone)
    }

    /// Whether a device with this role may decide approvals.
    pub fn may_approve(self) -> bool {
        matches!(self, Role::Desktop | Role::Phone)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "desktop" => Ok(Role::Desktop),
            "phone" => Ok(Role::Phone),
            "viewer" => Ok(Role::Viewer),
            _ => Err(ParseIdError {
                kind: "role (desktop, phone or viewer)",
                input: s.to_owned(),
            }),
        }
    }
}

/// The automerge actor a device writes as during one session (one opening of its store): the
/// device id, then 8 bytes of microseconds since the Unix epoch, then 4 random bytes.
///
/// Why not the device id alone: a local change reaches peers while its own durable write is
/// still under way (see `Repo::change`). If the device then crashes before that write lands, it
/// comes back without the change while a peer holds it; writing the next change with the same
/// actor would reuse its sequence number, and automerge refuses a second change with the same
/// actor and sequence (the document would stop syncing). A fresh actor per session cannot clash.
/// The time prefix makes a later session's actor sort after an earlier one's, so where two
/// sessions' operations tie, the later session wins.
pub fn session_actor(device: &DeviceId) -> automerge::ActorId {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut bytes = Vec::with_capacity(ACTOR_DEVICE_BYTES + 12);
    bytes.extend_from_slice(device.as_bytes());
    bytes.extend_from_slice(&micros.to_be_bytes());
    bytes.extend_from_slice(&rand::random::<[u8; 4]>());
    automerge::ActorId::from(bytes)
}

/// How many leading bytes of an actor name its device.
pub(crate) const ACTOR_DEVICE_BYTES: usize = 32;

/// The device (hex id) that wrote as `actor`: its first 32 bytes. Documents written before
/// session actors used the bare device id, which maps to itself.
pub fn actor_device(actor: &automerge::ActorId) -> String {
    let bytes = actor.to_bytes();
    hex(&bytes[..bytes.len().min(ACTOR_DEVICE_BYTES)])
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    // On the path of every received operation (device ids are compared as hex), where
    // `write!` per byte showed in profiles.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Parses exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte_and_parses_back() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(parse_hex::<32>(&hex(&bytes)), Some(bytes));
        // The same text as iroh's own rendering of a key.
        let key = iroh::SecretKey::generate().public();
        assert_eq!(hex(key.as_bytes()), key.to_string());
    }

    #[test]
    fn space_id_round_trips_through_text() {
        let id = SpaceId::random();
        assert_eq!(id.to_string().parse::<SpaceId>().unwrap(), id);
        assert!("xyz".parse::<SpaceId>().is_err());
    }

    #[test]
    fn every_session_writes_as_its_own_actor_of_the_same_device() {
        let device = iroh::SecretKey::generate().public();
        let first = session_actor(&device);
        let second = session_actor(&device);
        assert_ne!(first, second);
        assert_eq!(actor_device(&first), device.to_string());
        assert_eq!(actor_device(&second), device.to_string());
        // An actor from before sessions (the bare device id) still names its device.
        let bare = automerge::ActorId::from(device.as_bytes().as_slice());
        assert_eq!(actor_device(&bare), device.to_string());
    }

    #[test]
    fn role_parses_only_known_names() {
        assert_eq!("viewer".parse::<Role>().unwrap(), Role::Viewer);
        assert!("admin".parse::<Role>().is_err());
    }
}
