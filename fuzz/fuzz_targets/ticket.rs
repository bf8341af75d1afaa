#![no_main]
//! Pairing tickets as pasted or scanned text.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<errand_pairing::Ticket>();
});
