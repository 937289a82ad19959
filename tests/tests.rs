//! The one integration-test binary: every test drives the real `overhear` executable over
//! loopback. Helpers live in `common`; the tests in `listener` (the core), `limits` and
//! `descriptors` (bounds and faults), `output_modes` (formats, colors, files), `edges` (output
//! and stop at their edges: slow, blocked, closed or odd outputs) and `stop` (randomized stops).

mod clients;
mod common;
mod descriptors;
mod edges;
mod first_hour;
mod limits;
mod listener;
mod output_modes;
mod stop;
