//! The one integration-test binary: every test drives the real `overhear` executable over
//! loopback. Helpers live in `common`; the tests in `listener` (the core), `limits` and
//! `descriptors` (bounds and faults), `output_modes` (formats, colors, files), `edges` (output
//! and stop at their edges: slow, blocked, closed or odd outputs), `stop` (randomized stops),
//! `clients` (README's walk-through with nc, ncat, socat and telnet), `first_hour` (help,
//! manual, completions and hints) `framing` (syslog, telnet,
//! length prefixes, delimiters), `talk` (typed messages sent back to clients), `tls` (TLS clients) and `ways_in` (Unix sockets, UDP, several
//! listeners).
//!
//! They run on Linux, where CI runs them: they read `/proc`, and use Linux's pipe and socket
//! controls and util-linux tools. Elsewhere the test binary is empty; the code is type-checked
//! for macOS and FreeBSD by `.ci/check-targets`.
#![cfg(target_os = "linux")]

mod clients;
mod common;
mod descriptors;
mod edges;
mod first_hour;
mod framing;
mod limits;
mod listener;
mod output_modes;
mod stop;
mod talk;
mod tls;
mod ways_in;
