#![no_main]
//! Sync messages as a peer sends them: through the bounds, then automerge, into a repo.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    errand_fuzz::apply(data);
});
