//! Proof of ticket possession and the short verification code.
//!
//! The joiner must show the host that it holds the ticket secret without sending the secret: a
//! passive observer of the pairing connection, or a host impostor, would otherwise learn it. The
//! proof is an HMAC keyed by the secret over the ticket id and *both* device ids, so it cannot be
//! replayed by another device (the joiner id is the key the QUIC handshake authenticated) nor
//! forwarded to a different host.
//!
//! The verification code covers the case the proof cannot: someone who saw the ticket (a
//! shoulder-surfed QR code, a leaked chat message) knows the secret and can race the rightful
//! joiner. The code depends on the joiner's key, so the host shows the attacker's code while the
//! real phone shows its own, and the user sees the mismatch before confirming.
//!
//! Every MAC input starts with a distinct domain string and the remaining fields have fixed
//! lengths, so a value computed for one purpose can never be valid for another.

use errand_sync::DeviceId;
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PROOF_DOMAIN: &[u8] = b"errand/pair/1 proof";
const CODE_DOMAIN: &[u8] = b"errand/pair/1 code";

/// An HMAC-SHA256 instance keyed by the ticket secret.
///
/// A 32-byte key is shorter than SHA-256's 64-byte block, and HMAC (RFC 2104) zero-pads such
/// keys to the block size, so building the padded block directly is the same function; it just
/// avoids a "key length" error path that cannot happen.
fn keyed(secret: &[u8; 32]) -> HmacSha256 {
    let mut key = Key::<HmacSha256>::default();
    for (k, s) in key.iter_mut().zip(secret) {
        *k = *s;
    }
    <HmacSha256 as KeyInit>::new(&key)
}

fn proof_mac(
    secret: &[u8; 32],
    ticket_id: &[u8; 16],
    joiner: &DeviceId,
    host: &DeviceId,
) -> HmacSha256 {
    let mut mac = keyed(secret);
    mac.update(PROOF_DOMAIN);
    mac.update(ticket_id);
    mac.update(joiner.as_bytes());
    mac.update(host.as_bytes());
    mac
}

/// The proof the joiner sends: HMAC-SHA256(secret, "errand/pair/1 proof" || ticket id ||
/// joiner || host).
pub fn join_proof(
    secret: &[u8; 32],
    ticket_id: &[u8; 16],
    joiner: &DeviceId,
    host: &DeviceId,
) -> [u8; 32] {
    proof_mac(secret, ticket_id, joiner, host)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a received proof in constant time, so response timing reveals nothing about how
/// much of a guessed proof was right. Any length other than 32 bytes is simply invalid.
pub fn verify_join_proof(
    secret: &[u8; 32],
    ticket_id: &[u8; 16],
    joiner: &DeviceId,
    host: &DeviceId,
    proof: &[u8],
) -> bool {
    proof_mac(secret, ticket_id, joiner, host)
        .verify_slice(proof)
        .is_ok()
}

/// The six-digit code both devices display, formatted "123 456".
///
/// Derived as HMAC-SHA256(secret, "errand/pair/1 code" || host || joiner), first 8 bytes as a
/// big-endian integer, modulo 1,000,000 (the bias of reducing 64 bits is negligible).
pub fn verification_code(secret: &[u8; 32], host: &DeviceId, joiner: &DeviceId) -> String {
    let mut mac = keyed(secret);
    mac.update(CODE_DOMAIN);
    mac.update(host.as_bytes());
    mac.update(joiner.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    for (f, d) in first.iter_mut().zip(digest.iter()) {
        *f = *d;
    }
    let n = u64::from_be_bytes(first) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        iroh::SecretKey::generate().public()
    }

    #[test]
    fn padded_key_equals_standard_hmac() {
        let secret: [u8; 32] = rand::random();
        let mut a = keyed(&secret);
        let mut b = <HmacSha256 as KeyInit>::new_from_slice(&secret).unwrap();
        a.update(b"hello");
        b.update(b"hello");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    #[test]
    fn proof_verifies_only_with_matching_inputs() {
        let secret: [u8; 32] = rand::random();
        let id: [u8; 16] = rand::random();
        let (joiner, host) = (dev(), dev());
        let proof = join_proof(&secret, &id, &joiner, &host);
        assert!(verify_join_proof(&secret, &id, &joiner, &host, &proof));

        let mut other_secret = secret;
        other_secret[0] ^= 1;
        let mut other_id = id;
        other_id[15] ^= 0x80;
        assert!(!verify_join_proof(
            &other_secret,
            &id,
            &joiner,
            &host,
            &proof
        ));
        assert!(!verify_join_proof(
            &secret, &other_id, &joiner, &host, &proof
        ));
        assert!(!verify_join_proof(&secret, &id, &dev(), &host, &proof));
        assert!(!verify_join_proof(&secret, &id, &joiner, &dev(), &proof));
        // Swapping the roles is a different message.
        assert!(!verify_join_proof(&secret, &id, &host, &joiner, &proof));
        assert!(!verify_join_proof(
            &secret,
            &id,
            &joiner,
            &host,
            &proof[..31]
        ));
        assert!(!verify_join_proof(&secret, &id, &joiner, &host, &[]));
        let mut flipped = proof;
        flipped[31] ^= 1;
        assert!(!verify_join_proof(&secret, &id, &joiner, &host, &flipped));
    }

    #[test]
    fn code_is_stable_and_formatted() {
        let secret: [u8; 32] = rand::random();
        let (host, joiner) = (dev(), dev());
        let code = verification_code(&secret, &host, &joiner);
        assert_eq!(code, verification_code(&secret, &host, &joiner));
        assert_eq!(code.len(), 7);
        let b = code.as_bytes();
        assert_eq!(b[3], b' ');
        assert!(b[..3].iter().chain(&b[4..]).all(u8::is_ascii_digit));
    }

    #[test]
    fn code_differs_when_any_key_differs() {
        // A single collision is possible (one in a million); over three distinct inputs that
        // chance is negligible, and the inputs are fixed so the test is deterministic.
        let secret = [7u8; 32];
        let host = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let joiner = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let other = iroh::SecretKey::from_bytes(&[3; 32]).public();
        let code = verification_code(&secret, &host, &joiner);
        assert_ne!(code, verification_code(&[8u8; 32], &host, &joiner));
        assert_ne!(code, verification_code(&secret, &other, &joiner));
        assert_ne!(code, verification_code(&secret, &host, &other));
        assert_ne!(code, verification_code(&secret, &joiner, &host));
    }
}
