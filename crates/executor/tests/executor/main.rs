//! Integration tests of errand-executor, one module per area.

mod desktop;
