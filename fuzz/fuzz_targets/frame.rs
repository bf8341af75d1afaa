#![no_main]
//! Length-prefixed frames as a stream delivers them.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut reader = errand_sync::wire::FrameReader::new(64 * 1024);
        let mut input = data;
        while let Ok(Some(_)) = reader.next(&mut input).await {}
    });
});
