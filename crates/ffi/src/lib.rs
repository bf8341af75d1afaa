//! errand-ffi: the uniffi surface through which mobile apps embed errand.
//!
//! Not built yet. It will be the only crate that depends on uniffi, converting the node's types
//! into its own records and a small flat error enum.
