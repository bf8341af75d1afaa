#![no_main]
//! Frames of a document stream: a compression tag, then a raw or deflated message, decoded in
//! sequence with one shared context as a stream does.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = errand_sync::wire::MessageDecoder::default();
    for frame in data.split(|&b| b == 0xfe) {
        if decoder.decode(frame, 1024 * 1024).is_err() {
            break;
        }
    }
});
