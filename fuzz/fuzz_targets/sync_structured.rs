#![no_main]
//! Real sync messages mutated field by field (counts, bloom filters, chunks with recomputed
//! checksums), seeded by the fuzzer's input, into a repo.

use errand_fuzz::hostile::{XorShift, mutate_sync_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = errand_fuzz::target();
    let mut seed = [0u8; 8];
    for (i, b) in data.iter().enumerate() {
        seed[i % 8] ^= b.rotate_left(i as u32 / 8);
    }
    let mut rng = XorShift(u64::from_le_bytes(seed) | 1);
    let valid = &t.messages[data.len() % t.messages.len()];
    errand_fuzz::apply(&mutate_sync_message(valid, &mut rng));
});
