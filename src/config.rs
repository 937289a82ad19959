//! `Config`: the validated settings a [`crate::Server`] runs with, free of any command-line types,
//! so tests, benchmarks and other programs can build one directly.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::access::AccessRules;
use crate::format::OutputOptions;
use crate::listen::tls::TlsOptions;
use crate::listen::{Spec, UnixMode};
use crate::talk::TalkSettings;
use crate::worker::WorkerSettings;

/// Default port, as in the tutorial overhear grows from.
pub const DEFAULT_PORT: u16 = 7878;
/// Default run time before the listener stops by itself.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(120);
/// Default longest wait of a worker's poll before it checks its stop flag, the tutorial's select
/// timeout. Only a safety net: the stop pipe wakes every worker at once. Each wake costs about
/// 10 µs per client, so a short interval burns CPU on idle clients (10,000 idle clients at
/// 100 ms kept a core 94 % busy).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default longest message printed whole.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default listen backlog. std's `TcpListener::bind` uses 128, which a burst of clients
/// overflows, costing each unlucky one a SYN retry of a second or more.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default limit on clients connected at once.
pub const DEFAULT_MAX_CONNS: usize = 1000;

/// How a server listens, how long it runs and how it prints.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients come in: one listener or several (TCP, UDP, Unix sockets); port 0 takes a
    /// free port.
    pub listen: Vec<Spec>,
    /// Permissions of Unix socket files; `None` leaves the umask's.
    pub unix_mode: Option<UnixMode>,
    /// How TLS listeners identify themselves and check clients; `None` with a TLS listener makes
    /// a certificate at start.
    pub tls: Option<TlsOptions>,
    /// Run time before stopping by itself; `None` runs until a signal.
    pub duration: Option<Duration>,
    /// Connections the kernel queues before they are accepted.
    pub backlog: u32,
    /// Most clients connected at once; one more is closed at once, without a worker.
    pub max_conns: usize,
    /// Which peers may connect.
    pub access: AccessRules,
    /// Log the time left and the clients connected this often; `None` does not.
    pub progress: Option<Duration>,
    /// What each worker needs: poll interval, idle timeout, maximum line, output style.
    pub worker: WorkerSettings,
    /// Read standard input and send each line to the clients it addresses; `None` does not.
    pub input: Option<TalkSettings>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![Spec::Tcp(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                DEFAULT_PORT,
            )))],
            unix_mode: None,
            tls: None,
            duration: Some(DEFAULT_DURATION),
            backlog: DEFAULT_BACKLOG,
            max_conns: DEFAULT_MAX_CONNS,
            access: AccessRules::default(),
            progress: None,
            worker: WorkerSettings {
                poll_interval: DEFAULT_POLL_INTERVAL,
                idle_timeout: None,
                max_line: DEFAULT_MAX_LINE,
                output: OutputOptions::default(),
                echo: false,
                framing: crate::framing::Framing::Lines,
                telnet: false,
                greeting: None,
            },
            input: None,
        }
    }
}
