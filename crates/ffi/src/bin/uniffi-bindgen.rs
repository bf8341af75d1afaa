//! Generates the foreign-language bindings from the built library (library mode):
//! `cargo run -p errand-ffi --bin uniffi-bindgen -- generate --library target/debug/liberrand_ffi.so ...`.
//! `scripts/bindings` is the one command that regenerates everything in `mobile-bindings/`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
