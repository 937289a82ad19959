//! The one integration-test binary: every test drives the real `overhear` executable over
//! loopback. Helpers live in `common`; the tests themselves in `listener` and `descriptors`.

mod common;
mod descriptors;
mod listener;
