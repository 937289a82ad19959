//! overhear listens on TCP ports, Unix sockets and UDP ports, gives every client that connects
//! its own numbered worker thread (every UDP source its own number), and prints every message
//! each client sends as `[N] message`, until a timer or a signal stops it; then it stops and
//! joins every worker, printing every byte they received.
//!
//! The binary is a thin wrapper around this library; tests and other programs can run a server
//! in-process:
//!
//! ```no_run
//! use overhear::output::Sink;
//! use overhear::{Config, Server, Spec, StopReason};
//!
//! # fn main() -> Result<(), overhear::Error> {
//! let config = Config {
//!     listen: vec![Spec::Tcp("127.0.0.1:0".parse().expect("literal address"))],
//!     ..Config::default()
//! };
//! let server = Server::bind(config)?;
//! for endpoint in server.endpoints() {
//!     println!("clients connect to {endpoint}");
//! }
//! let stop = server.shutdown();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(5));
//!     stop.request(StopReason::Requested);
//! });
//! let summary = server.run(Sink::Writer(Box::new(std::io::stdout())))?;
//! eprintln!("{} clients sent {} messages", summary.clients, summary.messages);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]

pub mod access;
pub mod cli;
pub mod config;
pub mod error;
pub mod format;
pub mod framing;
pub mod listen;
pub mod outbox;
pub mod output;
mod platform;
mod poll;
pub mod server;
pub mod shutdown;
pub mod summary;
mod sync;
pub mod talk;
pub mod threads;
pub mod worker;

pub use config::Config;
pub use error::Error;
pub use listen::{Peer, Spec};
pub use platform::{ignore_file_size_signal, raise_fd_limit};
pub use server::Server;
pub use shutdown::{Shutdown, StopReason};
pub use summary::Summary;
pub use worker::ClientId;
