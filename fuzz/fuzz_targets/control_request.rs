#![no_main]
//! Requests on the local control socket.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<errand_node::control::Request>(data);
});
