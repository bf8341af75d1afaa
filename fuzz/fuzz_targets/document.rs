#![no_main]
//! Whole documents received outside sync (the index a new member gets while pairing).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = errand_fuzz::target();
    let _ = t.repo.import(&t.doc, data, &[]);
});
