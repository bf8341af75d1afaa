#![no_main]
//! Change chunks: the input is one `changes` entry of an otherwise valid sync message.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut message = vec![0x42, 0, 0, 0, 1];
    let mut len = data.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            message.push(byte);
            break;
        }
        message.push(byte | 0x80);
    }
    message.extend_from_slice(data);
    errand_fuzz::apply(&message);
});
