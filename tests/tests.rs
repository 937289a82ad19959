//! The one integration-test binary: every test drives the real `overhear` executable over
//! loopback. Helpers live in `common`; the tests in `listener` (the core), `limits` and
//! `descriptors` (bounds and faults) and `output_modes` (formats, colors, files).

mod common;
mod descriptors;
mod limits;
mod listener;
mod output_modes;
