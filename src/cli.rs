//! The command line: clap's `Args`, parsed and checked into a [`Config`], and the help,
//! completion scripts and manual page made from its definition. clap types stop here.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{
    ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser, ValueEnum, ValueHint,
};
use ipnet::IpNet;
use log::LevelFilter;

use crate::access::{AccessRules, parse_network};
use crate::config::{Config, DEFAULT_BACKLOG, DEFAULT_MAX_CONNS, DEFAULT_PORT};
use crate::error::{EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use crate::format::{Format, OutputOptions, Style};
use crate::framing::Framing;
use crate::listen::tls::{Identity, TlsOptions};
use crate::listen::{Spec, UnixMode, UnixPath};
use crate::talk::TalkSettings;
use crate::worker::WorkerSettings;

/// Usage examples, for `--help` and the manual page: a command line and what it does. Each
/// pair fits an 80-column help.
const EXAMPLES: [(&str, &str); 7] = [
    ("overhear", "listen on 127.0.0.1:7878 for 2 minutes"),
    ("overhear -p 9000 -d 0", "listen on port 9000 until Ctrl-C"),
    (
        "overhear --host :: -d 1h",
        "listen on every address for an hour",
    ),
    (
        "overhear -p 0 -q",
        "listen on a free port; -q still logs it",
    ),
    (
        "overhear --format json -o log.jsonl",
        "write JSON Lines to log.jsonl",
    ),
    (
        "overhear --hex --echo",
        "hex-dump binary data and echo it back",
    ),
    (
        "nc 127.0.0.1 7878",
        "a client: each line prints as [N] line",
    ),
];

/// Installing the bash completions and the manual page, as README shows it (the long line is
/// continued, so it fits an 80-column help).
const INSTALL: &str = "\
mkdir -p ~/.local/share/bash-completion/completions
overhear --completions bash \\
    > ~/.local/share/bash-completion/completions/overhear
mkdir -p ~/.local/share/man/man1
overhear --man > ~/.local/share/man/man1/overhear.1";

/// The exit statuses README's "Exit status" table documents, briefly.
const EXIT_STATUSES: [(u8, &str); 4] = [
    (
        EXIT_OK,
        "stopped as asked: time up, Ctrl-C/SIGTERM, stdout's reader left",
    ),
    (
        EXIT_FAILURE,
        "runtime error, one line on stderr: cannot listen, output failed",
    ),
    (EXIT_USAGE, "bad arguments (the message says which)"),
    (
        EXIT_INTERRUPTED,
        "a second Ctrl-C/SIGTERM while stopping: exit at once",
    ),
];

/// The environment variables overhear reads.
const ENVIRONMENT: [(&str, &str); 2] = [
    (
        "RUST_LOG",
        "log filter, overrides -v/-q: RUST_LOG=warn, RUST_LOG=overhear=debug",
    ),
    (
        "NO_COLOR",
        "if not empty, no colors (--color always still colors the output)",
    ),
];

/// What a duration looks like, for the errors of the duration flags.
const DURATION_FORMS: &str = "500ms, 90s, 2m or 1h30m";

/// Listen on a TCP port and print what every client sends, one numbered thread per client.
// [`Args`] adds the check clap cannot state: a conflict with one value of `--format`.
#[derive(Debug, Parser)]
#[command(name = "overhear", version, about, after_help = epilogue())]
struct Flags {
    /// Address to listen on: an IPv4 or IPv6 address, or a host name such as localhost
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1", value_parser = parse_host,
          value_hint = ValueHint::Hostname, conflicts_with_all = ["unix", "listen"])]
    host: IpAddr,

    /// Port to listen on; 0 takes a free port (the bound one is logged)
    #[arg(short, long, value_name = "PORT", default_value_t = DEFAULT_PORT,
          value_parser = parse_port, allow_negative_numbers = true, value_hint = ValueHint::Other,
          conflicts_with_all = ["unix", "listen"])]
    port: u16,

    /// Listen for UDP datagrams on --host/--port instead of TCP; each source is a client
    #[arg(short, long, conflicts_with_all = ["unix", "listen"])]
    udp: bool,

    /// Listen on a Unix stream socket at PATH instead of TCP (@NAME: Linux's abstract namespace)
    #[arg(short = 'U', long, value_name = "PATH", value_parser = UnixPath::parse,
          value_hint = ValueHint::FilePath, conflicts_with = "listen")]
    unix: Option<UnixPath>,

    /// Permissions of the Unix socket file, in octal such as 660 (default: the umask's)
    #[arg(long, value_name = "MODE", value_parser = UnixMode::parse,
          value_hint = ValueHint::Other)]
    unix_mode: Option<UnixMode>,

    /// Speak TLS on the TCP listener: with a certificate made at start, or --tls-cert/--tls-key
    #[arg(long, conflicts_with_all = ["udp", "unix", "listen"])]
    tls: bool,

    /// The TLS certificate chain (PEM), instead of one made at start
    #[arg(long, value_name = "FILE", requires = "tls_key", value_hint = ValueHint::FilePath)]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519)
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = ValueHint::FilePath)]
    tls_key: Option<PathBuf>,

    /// Write the certificate made at start to FILE (PEM), for clients to trust
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert", value_hint = ValueHint::FilePath)]
    tls_cert_out: Option<PathBuf>,

    /// Require TLS clients to present a certificate signed by a CA in FILE (PEM)
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    tls_client_ca: Option<PathBuf>,

    /// Protocols to offer TLS clients through ALPN, in order: h2,http/1.1
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_hint = ValueHint::Other)]
    tls_alpn: Vec<String>,

    /// Drop a TLS client that has not finished its handshake after this long
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = parse_positive_duration, value_hint = ValueHint::Other)]
    tls_handshake_timeout: Duration,

    /// Listen here too, repeatable: tcp://HOST:PORT (or HOST:PORT), tls://HOST:PORT,
    /// udp://HOST:PORT, unix:PATH; one numbering, one output, one stop for all
    #[arg(long, value_name = "SPEC", value_parser = Spec::parse, value_hint = ValueHint::Other)]
    listen: Vec<Spec>,

    /// Stop after this long, e.g. 500ms, 90s, 2m, 1h30m; 0 runs until Ctrl-C/SIGTERM
    #[arg(short, long, value_name = "DURATION", default_value = "2m",
          value_parser = parse_duration, value_hint = ValueHint::Other)]
    duration: Duration,

    /// Longest a worker waits in poll before checking its stop flag (stops wake it sooner)
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = parse_positive_duration, value_hint = ValueHint::Other)]
    poll_interval: Duration,

    /// Connections the kernel queues before overhear accepts them (capped by net.core.somaxconn)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..), value_hint = ValueHint::Other)]
    backlog: u32,

    /// Most clients connected at once; one more is closed at once with a warning
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS,
          value_parser = parse_count, value_hint = ValueHint::Other)]
    max_conns: usize,

    /// Disconnect a client that sends nothing for this long, e.g. 30s, 5m (default: never)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration,
          value_hint = ValueHint::Other)]
    idle_timeout: Option<Duration>,

    /// Accept only peers in this network (CIDR such as 10.0.0.0/8, or one address); repeatable
    #[arg(long, value_name = "CIDR", value_parser = parse_network, value_hint = ValueHint::Other)]
    allow: Vec<IpNet>,

    /// Refuse peers in this network (CIDR or one address); repeatable; wins over --allow
    #[arg(long, value_name = "CIDR", value_parser = parse_network, value_hint = ValueHint::Other)]
    deny: Vec<IpNet>,

    /// Longest message printed whole; longer ones are printed in pieces marked [N+]
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_size,
          value_hint = ValueHint::Other)]
    max_line: usize,

    /// No escapes either way: print message bytes unchanged instead of escaping control bytes
    /// and invalid UTF-8, and send typed lines and --greet as written (not with --format json
    /// or --hex)
    #[arg(long, conflicts_with = "hex")]
    raw: bool,

    /// Output format: text lines "[N] message", or JSON Lines (one object per event)
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = FormatChoice::Text)]
    format: FormatChoice,

    /// Show what clients send as a hex dump (offset, hex bytes, printable column)
    #[arg(long, conflicts_with = "format")]
    hex: bool,

    /// Start each output line with an RFC 3339 UTC time with milliseconds
    #[arg(long)]
    timestamps: bool,

    /// Color client numbers: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, value_name = "COLOR", value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,

    /// Send every byte a client sends back to it
    #[arg(long)]
    echo: bool,

    /// How messages are cut: lines, delimiter:X, syslog (RFC 6587), length:u8|u16be|u16le|
    /// u32be|u32le, none (each read)
    #[arg(long, value_name = "KIND", default_value = "lines", value_parser = Framing::parse,
          value_hint = ValueHint::Other)]
    framing: Framing,

    /// Refuse a telnet client's option negotiation and take telnet commands out of messages
    #[arg(long)]
    telnet: bool,

    /// Send each line typed on stdin to the clients: auto (when stdin is a terminal), always
    /// (a pipe or FIFO too), never. "@3 text" goes to client 3, others to every client
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = StdinChoice::Auto)]
    stdin: StdinChoice,

    /// End typed lines with \r\n instead of \n
    #[arg(short = 'C', long)]
    crlf: bool,

    /// Send TEXT to each client as it connects, before reading it (escapes such as \r\n
    /// and \xNN are read; no line end is added), e.g. '220 ready\r\n'
    #[arg(long, value_name = "TEXT", value_hint = ValueHint::Other)]
    greet: Option<String>,

    /// Append messages to FILE instead of writing them to stdout
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    output: Option<PathBuf>,

    /// Log the time left and the clients connected this often (1m when given without a value)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "1m",
          value_parser = parse_positive_duration, value_hint = ValueHint::Other)]
    progress: Option<Duration>,

    /// Print a completion script for SHELL to stdout and exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,

    /// Print the manual page (roff) to stdout and exit
    #[arg(long, exclusive = true)]
    man: bool,

    /// Log more on stderr (-v debug, -vv trace)
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Log less on stderr (-q warnings, errors and the listening line, -qq errors only, -qqq
    /// nothing)
    #[arg(short, long, action = ArgAction::Count)]
    quiet: u8,
}

/// The parsed command line: [`Flags`] as clap derives them, plus the one check clap cannot
/// state, `--raw` with `--format json` (`--raw --format text` is fine: text is the default).
#[derive(Debug)]
pub struct Args(Flags);

impl CommandFactory for Args {
    fn command() -> Command {
        Flags::command()
    }

    fn command_for_update() -> Command {
        Flags::command_for_update()
    }
}

impl FromArgMatches for Args {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = Flags::from_arg_matches(matches)?;
        flags.check()?;
        Ok(Args(flags))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)?;
        self.0.check()
    }
}

impl Parser for Args {}

impl Flags {
    /// Rejects `--raw --format json` (JSON escapes by its own rules, so raw bytes cannot go
    /// there) and a `--greet` whose escapes do not read. Errors of clap's kind, so they are
    /// printed and exit (status 2) like clap's own.
    fn check(&self) -> Result<(), clap::Error> {
        if self.raw && self.format == FormatChoice::Json {
            return Err(clap::Error::raw(
                ErrorKind::ArgumentConflict,
                "the argument '--raw' cannot be used with '--format json'",
            ));
        }
        if self.unix_mode.is_some() && !self.listeners().iter().any(|l| matches!(l, Spec::Unix(_)))
        {
            return Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                "--unix-mode sets the permissions of a Unix socket: give --unix PATH or \
                 --listen unix:PATH with it",
            ));
        }
        let tls_flag = [
            (self.tls_cert.is_some(), "--tls-cert"),
            (self.tls_cert_out.is_some(), "--tls-cert-out"),
            (self.tls_client_ca.is_some(), "--tls-client-ca"),
            (!self.tls_alpn.is_empty(), "--tls-alpn"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        if let Some(flag) = tls_flag {
            if !self.listeners().iter().any(|l| matches!(l, Spec::Tls(_))) {
                return Err(clap::Error::raw(
                    ErrorKind::MissingRequiredArgument,
                    format!("{flag} sets up TLS: give --tls or --listen tls://HOST:PORT with it"),
                ));
            }
        }
        self.greeting().map(|_| ())
    }

    /// The TLS setup the flags ask for.
    fn tls_options(&self) -> TlsOptions {
        TlsOptions {
            identity: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Identity::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => Identity::Generated {
                    cert_out: self.tls_cert_out.clone(),
                },
            },
            client_ca: self.tls_client_ca.clone(),
            alpn: self.tls_alpn.clone(),
            handshake_timeout: self.tls_handshake_timeout,
        }
    }

    /// The listeners asked for: `--listen` ones, or the one `--host`/`--port`/`-u`/`-U` say.
    fn listeners(&self) -> Vec<Spec> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        match (&self.unix, self.udp) {
            (Some(path), _) => vec![Spec::Unix(path.clone())],
            (None, true) => vec![Spec::Udp(SocketAddr::new(self.host, self.port))],
            (None, false) if self.tls => vec![Spec::Tls(SocketAddr::new(self.host, self.port))],
            (None, false) => vec![Spec::Tcp(SocketAddr::new(self.host, self.port))],
        }
    }

    /// The bytes of `--greet`: its text, with escapes read unless `--raw`.
    fn greeting(&self) -> Result<Option<Vec<u8>>, clap::Error> {
        let Some(text) = &self.greet else {
            return Ok(None);
        };
        if self.raw {
            return Ok(Some(text.clone().into_bytes()));
        }
        crate::output::unescape(text.as_bytes())
            .map(Some)
            .map_err(|at| {
                clap::Error::raw(
                    ErrorKind::ValueValidation,
                    format!(
                        "invalid value '{text}' for '--greet <TEXT>': the backslash at byte {} \
                         starts no escape (write \\\\, \\xNN, \\r, \\n or \\t)",
                        at + 1
                    ),
                )
            })
    }
}

/// The text after the options in `--help`: examples, installing, exit statuses, environment.
fn epilogue() -> String {
    let width = EXAMPLES.iter().map(|(command, _)| command.len()).max();
    let width = width.unwrap_or_default();
    let mut text = String::from("Examples:\n");
    for (command, what) in EXAMPLES {
        text.push_str(&format!("  {command:<width$}  {what}\n"));
    }
    text.push_str("\nInstall the bash completions and the manual page:\n");
    for line in INSTALL.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("\nExit status:\n");
    for (status, when) in EXIT_STATUSES {
        text.push_str(&format!("  {status:<3}  {when}\n"));
    }
    text.push_str("\nEnvironment:\n");
    for (name, what) in ENVIRONMENT {
        text.push_str(&format!("  {name}  {what}\n"));
    }
    text.pop();
    text
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatChoice {
    Text,
    Json,
}

/// `--stdin` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StdinChoice {
    Auto,
    Always,
    Never,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to color: `always`, or `auto` on a terminal when `NO_COLOR` is unset or empty.
    pub fn resolve(self, terminal: bool, no_color: Option<&str>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && no_color.is_none_or(str::is_empty),
        }
    }
}

/// What the binary does instead of listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    Completions(clap_complete::Shell),
    Man,
}

impl Args {
    /// Whether the arguments ask for a completion script or the manual page instead of a run.
    pub fn extra(&self) -> Option<Extra> {
        match (self.0.completions, self.0.man) {
            (Some(shell), _) => Some(Extra::Completions(shell)),
            (None, true) => Some(Extra::Man),
            (None, false) => None,
        }
    }

    /// The file to append messages to, if not stdout.
    pub fn output_path(&self) -> Option<&std::path::Path> {
        self.0.output.as_deref()
    }

    /// How much to log: info, stepped up by `-v` and down by `-q`.
    pub fn log_level(&self) -> LevelFilter {
        const LEVELS: [LevelFilter; 6] = [
            LevelFilter::Off,
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ];
        let index = 3 + i32::from(self.0.verbose) - i32::from(self.0.quiet);
        LEVELS[index.clamp(0, 5) as usize]
    }

    /// The validated configuration these arguments describe. Color is decided here, from
    /// `--color`, whether stdout is a terminal, and `NO_COLOR`.
    pub fn into_config(self) -> Config {
        let flags = self.0;
        // Checked when parsed: the escapes read.
        let greeting = flags.greeting().ok().flatten();
        let stdin = std::io::stdin();
        let read_stdin = match flags.stdin {
            StdinChoice::Always => true,
            StdinChoice::Never => false,
            StdinChoice::Auto => {
                stdin.is_terminal() && crate::platform::reads_terminal_in_foreground(&stdin)
            }
        };
        let terminal = flags.output.is_none() && std::io::stdout().is_terminal();
        let no_color = std::env::var("NO_COLOR").ok();
        let format = match (flags.hex, flags.format) {
            (true, _) => Format::Hex,
            (false, FormatChoice::Json) => Format::Json,
            (false, FormatChoice::Text) => Format::Text,
        };
        Config {
            listen: flags.listeners(),
            unix_mode: flags.unix_mode,
            tls: Some(flags.tls_options()),
            duration: (!flags.duration.is_zero()).then_some(flags.duration),
            backlog: flags.backlog,
            max_conns: flags.max_conns,
            access: AccessRules::new(flags.allow, flags.deny),
            progress: flags.progress,
            worker: WorkerSettings {
                poll_interval: flags.poll_interval,
                idle_timeout: flags.idle_timeout,
                max_line: flags.max_line,
                output: OutputOptions {
                    format,
                    style: if flags.raw {
                        Style::Raw
                    } else {
                        Style::Escaped
                    },
                    timestamps: flags.timestamps,
                    color: format != Format::Json
                        && flags.color.resolve(terminal, no_color.as_deref()),
                },
                echo: flags.echo,
                framing: flags.framing,
                telnet: flags.telnet,
                greeting: greeting.map(crate::outbox::Message::greeting),
            },
            input: read_stdin.then_some(TalkSettings {
                raw: flags.raw,
                crlf: flags.crlf,
            }),
        }
    }
}

/// An IP address, or a host name resolved to its first address. An address with a port
/// (`127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`) gets a hint at `--port` instead.
fn parse_host(text: &str) -> Result<IpAddr, String> {
    let literal = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    if let Ok(ip) = literal.unwrap_or(text).parse() {
        return Ok(ip);
    }
    if let Some((host, port)) = split_port(text) {
        let host = if host.is_empty() {
            String::new()
        } else {
            format!("--host {host} ")
        };
        return Err(format!("give the port with --port ({host}--port {port})"));
    }
    let mut addrs = (text, 0)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve host name: {}", crate::error::describe(&err)))?;
    addrs
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| String::from("the host name has no address"))
}

/// The host and the port of `HOST:PORT` or `[IPV6]:PORT`, the way addresses are written
/// elsewhere; `None` for anything else (a bare IPv6 address has colons but no port).
fn split_port(text: &str) -> Option<(&str, &str)> {
    let (host, port) = text.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
            .then_some((ipv6, port)),
        None => (!host.contains([':', '[', ']'])).then_some((host, port)),
    }
}

/// A port number; anything else (`-1`, `70000`, `http`) gets the range.
fn parse_port(text: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| String::from("a port is a number from 0 to 65535 (0 takes a free port)"))
}

/// A size in bytes: `4096`, `64KiB`, `1MiB` (`K`/`KB`/`M`/`MB` are read as powers of 1024 too).
fn parse_size(text: &str) -> Result<usize, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 4096, 64KiB or 1MiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("unknown unit in '{text}': use B, KiB or MiB")),
    };
    match number.checked_mul(scale) {
        Some(0) => Err(String::from("must be at least 1 byte")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is too large")),
    }
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err(String::from("must be at least 1")),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// A duration such as `90s` or `1h30m`; `0` means no limit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| {
        format!("write a duration like {DURATION_FORMS}, or 0 to run until Ctrl-C/SIGTERM")
    })
}

/// A duration more than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("must be more than 0, such as {DURATION_FORMS}")),
        Ok(d) => Ok(d),
        Err(_) => Err(format!("write a duration like {DURATION_FORMS}")),
    }
}

/// A completion script for `shell`. bash gets host names for host-name values, which
/// clap_complete leaves to file-name completion there.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut command = Args::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "overhear", &mut script);
    if shell != clap_complete::Shell::Bash {
        return script;
    }
    let flags: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.get_value_hint() == ValueHint::Hostname)
        .flat_map(|arg| {
            let long = arg.get_long().map(|long| format!("--{long})"));
            let short = arg.get_short().map(|short| format!("-{short})"));
            long.into_iter().chain(short)
        })
        .collect();
    complete_hostnames(&String::from_utf8_lossy(&script), &flags).into_bytes()
}

/// `script` with the file-name completion that follows each `case` label in `labels`
/// (`--host)`) replaced by bash's host-name completion.
fn complete_hostnames(script: &str, labels: &[String]) -> String {
    const FILES: &str = r#"COMPREPLY=($(compgen -f "${cur}"))"#;
    const HOSTS: &str = r#"COMPREPLY=($(compgen -A hostname -- "${cur}"))"#;
    let mut out = String::with_capacity(script.len());
    let mut after_label = false;
    for line in script.split_inclusive('\n') {
        if after_label && line.trim() == FILES {
            out.push_str(&line.replacen(FILES, HOSTS, 1));
        } else {
            out.push_str(line);
        }
        after_label = labels.iter().any(|label| line.trim() == label);
    }
    out
}

/// The manual page (roff): clap_mangen's title, name, description, options and version, a
/// synopsis with value names, and sections of its own for the output format, exit status,
/// environment and examples.
pub fn manual_page() -> Vec<u8> {
    let mut command = Args::command();
    // Built, the arguments know how many values they take (for the synopsis).
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    let sections = [
        rendered(|w| man.render_title(w)),
        rendered(|w| man.render_name_section(w)),
        synopsis(&command).into_bytes(),
        rendered(|w| man.render_description_section(w)),
        rendered(|w| man.render_options_section(w)),
        manual_sections().into_bytes(),
        rendered(|w| man.render_version_section(w)),
    ];
    let mut page = ROFF_PREAMBLE.as_bytes().to_vec();
    for section in &sections {
        // clap_mangen starts every section with the preamble; the page needs it once.
        let body = section.strip_prefix(ROFF_PREAMBLE.as_bytes());
        page.extend_from_slice(body.unwrap_or(section));
    }
    page
}

/// What one of clap_mangen's `render_*` methods writes.
fn rendered(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut text = Vec::new();
    render(&mut text).expect("writing to memory cannot fail");
    text
}

/// What the roff crate (under clap_mangen) puts before every rendering: a string `Aq` holding
/// an apostrophe, which the text below uses too.
const ROFF_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// The SYNOPSIS section: a run with every option and its value name, then each option that
/// stands alone (`--man`, `--help`) on a line of its own.
fn synopsis(command: &Command) -> String {
    let name = command.get_name();
    // Every argument is an option, and none is hidden.
    let (alone, options): (Vec<_>, Vec<_>) = command.get_arguments().partition(|arg| {
        arg.is_exclusive_set() || matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
    });
    let mut text = String::from(".SH SYNOPSIS\n");
    // Lines break between options only (`\%` keeps a word whole), and are not justified.
    text.push_str(".na\n");
    text.push_str(&format!("\\%\\fB{name}\\fR"));
    for arg in options {
        text.push_str(&format!("\n\\%[{}]", synopsis_option(arg)));
    }
    for arg in alone {
        text.push_str(&format!(
            "\n.br\n\\%\\fB{name}\\fR \\%{}",
            synopsis_option(arg)
        ));
    }
    text.push_str("\n.ad\n");
    text
}

/// One option in the synopsis: `-p|--port PORT`, `--progress [DURATION]`, `-v...`, with the
/// unbreakable spaces of roff (`\ `).
fn synopsis_option(arg: &clap::Arg) -> String {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("\\fB\\-{}\\fR", roff_escape(&short.to_string())));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff_escape(long)));
    }
    let mut text = names.join("|");
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if takes_value && !matches!(arg.get_action(), ArgAction::Count | ArgAction::SetTrue) {
        let value = arg
            .get_value_names()
            .map_or_else(|| arg.get_id().to_string(), |names| names.join(" "));
        let value = format!("\\fI{}\\fR", roff_escape(&value));
        let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
        if optional {
            text.push_str(&format!("\\ [{value}]"));
        } else {
            text.push_str(&format!("\\ {value}"));
        }
    }
    if matches!(arg.get_action(), ArgAction::Count) {
        // `\&` keeps roff from taking the dots for the end of a sentence.
        text.push_str("...\\&");
    }
    text
}

/// OUTPUT FORMAT, EXIT STATUS, ENVIRONMENT and EXAMPLES, in roff.
fn manual_sections() -> String {
    let mut text = String::from(".SH \"OUTPUT FORMAT\"\n");
    for paragraph in OUTPUT_FORMAT.split("\n\n") {
        text.push_str(&format!(
            ".PP\n{}\n",
            roff_escape(&paragraph.replace('\n', " "))
        ));
    }
    text.push_str(".SH \"EXIT STATUS\"\n");
    for (status, when) in EXIT_STATUSES {
        text.push_str(&format!(".TP\n\\fB{status}\\fR\n{}\n", roff_escape(when)));
    }
    text.push_str(".SH ENVIRONMENT\n");
    for (name, what) in ENVIRONMENT {
        text.push_str(&format!(".TP\n\\fB{name}\\fR\n{}\n", roff_escape(what)));
    }
    text.push_str(".SH EXAMPLES\n");
    for (command, what) in EXAMPLES {
        let what = roff_escape(&capitalized(what));
        text.push_str(&format!(".TP\n\\fB{}\\fR\n{what}.\n", roff_escape(command)));
    }
    text.push_str(".PP\nInstall the bash completions and the manual page:\n.PP\n.RS 4\n.nf\n");
    for line in INSTALL.lines() {
        text.push_str(&format!("{}\n", roff_escape(line)));
    }
    text.push_str(".fi\n.RE\n");
    text
}

/// What the manual says about stdout and stderr, in paragraphs (README has the details).
const OUTPUT_FORMAT: &str = "\
stdout carries client messages only, one per line: [N] message, where N is the client's
number: 1, 2, 3, ... in the order clients connected, never reused in a run. A message ends
at a newline; a carriage return right before it is dropped. A last message without a
newline is printed when the client closes or the server stops.

A message longer than --max-line bytes is printed in pieces of that many bytes: the first
as [N], the ones after it as [N+]. A message the stop cut off while the client was still
sending it is printed as [N!] ([N+!] for a piece). Lines are written whole: two messages
never share a line.

Control bytes, DEL, C1 controls and bytes that are not valid UTF-8 are printed as \\xNN, and
a backslash as \\\\, so the escaping is lossless and no client can control the terminal.
--raw prints the bytes unchanged.

--format json writes JSON Lines: one object per event (connect, message, disconnect,
refused, summary), each with ts and event. A message has data, or data_b64 when it is not
valid UTF-8, and eol, the line end that followed it. --hex prints each read as a hex dump,
16 bytes to a row, as hexdump -C shows them. --timestamps starts each text or hex line with
an RFC 3339 UTC time.

stderr carries the log: \"listening on ADDR\" once bound (also with -q), \"client N connected
from PEER\", \"client N disconnected (REASON)\", refused connections, and at the end a summary
and a table of the clients served.";

/// `text` with roff's special characters escaped: backslash, minus, apostrophe, and a period
/// or apostrophe at the start of a line.
fn roff_escape(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq");
    escaped
        .lines()
        .map(|line| {
            if line.starts_with('.') {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Args::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("overhear").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_tutorial() {
        let config = parse(&[]).expect("no arguments").into_config();
        assert_eq!(
            config.listen,
            [Spec::Tcp("127.0.0.1:7878".parse().expect("literal"))]
        );
        assert_eq!(
            config.input, None,
            "stdin is not a terminal under cargo test"
        );
        assert_eq!(config.duration, Some(Duration::from_secs(120)));
        assert_eq!(config.worker.poll_interval, Duration::from_secs(5));
        assert_eq!(config.worker.output.style, Style::Escaped);
        assert_eq!(config.worker.output.format, Format::Text);
        assert!(!config.worker.echo);
        assert_eq!(config.progress, None);
    }

    #[test]
    fn listeners_come_from_one_form_or_the_other() {
        let listen = |args: &[&str]| parse(args).map(|a| a.into_config().listen);
        assert_eq!(
            listen(&["-u", "-p", "5514"]).expect("udp"),
            [Spec::Udp("127.0.0.1:5514".parse().expect("literal"))]
        );
        assert_eq!(
            listen(&["-U", "/tmp/o.sock", "--unix-mode", "660"]).expect("unix"),
            [Spec::Unix(UnixPath::File("/tmp/o.sock".into()))]
        );
        assert_eq!(
            listen(&["--listen", "127.0.0.1:1", "--listen", "udp://127.0.0.1:2"]).expect("two"),
            [
                Spec::Tcp("127.0.0.1:1".parse().expect("literal")),
                Spec::Udp("127.0.0.1:2".parse().expect("literal"))
            ]
        );
        for bad in [
            &["--listen", "127.0.0.1:1", "--port", "2"][..],
            &["--listen", "127.0.0.1:1", "--host", "::1"],
            &["--listen", "127.0.0.1:1", "-u"],
            &["--listen", "127.0.0.1:1", "-U", "/tmp/x"],
            &["-u", "-U", "/tmp/x"],
            &["-U", "/tmp/x", "-p", "9"],
            &["--unix-mode", "660"],
            &["-U", "/tmp/x", "--unix-mode", "8"],
            &["-U", "/tmp/x", "--unix-mode", "rw"],
            &["--listen", "ftp://127.0.0.1:1"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        let err = parse(&["--unix-mode", "660"]).expect_err("no unix socket");
        assert!(err.to_string().contains("give --unix PATH"), "{err}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let config = parse(&["--duration", "1h30m"])
            .expect("valid")
            .into_config();
        assert_eq!(config.duration, Some(Duration::from_secs(5400)));
        let config = parse(&["-d", "0"]).expect("valid").into_config();
        assert_eq!(config.duration, None);
        assert!(parse(&["--duration", "soon"]).is_err());
        assert!(parse(&["--poll-interval", "0"]).is_err());
    }

    #[test]
    fn hosts_take_ipv6_and_names() {
        let ip = |host: &str| match parse(&["--host", host])
            .expect("valid")
            .into_config()
            .listen[..]
        {
            [Spec::Tcp(addr)] => addr.ip(),
            ref other => panic!("{other:?}"),
        };
        assert_eq!(ip("::1"), "::1".parse::<IpAddr>().expect("literal"));
        assert_eq!(ip("[::]"), "::".parse::<IpAddr>().expect("literal"));
        assert!(ip("localhost").is_loopback());
        assert!(parse(&["--port", "70000"]).is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        let config = parse(&[]).expect("no arguments").into_config();
        assert_eq!(config.worker.max_line, crate::config::DEFAULT_MAX_LINE);
    }

    #[test]
    fn limits_and_rules_reach_the_config() {
        let config = parse(&[
            "--max-conns",
            "3",
            "--idle-timeout",
            "30s",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "10.0.0.1",
        ])
        .expect("valid")
        .into_config();
        assert_eq!(config.max_conns, 3);
        assert_eq!(config.backlog, 4096);
        assert_eq!(config.worker.idle_timeout, Some(Duration::from_secs(30)));
        assert!(config.access.check("10.0.0.2".parse().expect("ip")).is_ok());
        assert!(
            config
                .access
                .check("10.0.0.1".parse().expect("ip"))
                .is_err()
        );
        assert!(parse(&["--max-conns", "0"]).is_err());
        assert!(parse(&["--allow", "nowhere"]).is_err());
        let config = parse(&[]).expect("valid").into_config();
        assert_eq!(config.max_conns, 1000);
        assert_eq!(config.worker.idle_timeout, None);
    }

    #[test]
    fn output_modes_reach_the_config() {
        let output = |args: &[&str]| parse(args).expect("valid").into_config().worker.output;
        assert_eq!(output(&["--format", "json"]).format, Format::Json);
        assert_eq!(output(&["--hex"]).format, Format::Hex);
        assert_eq!(output(&["--raw"]).style, Style::Raw);
        assert!(output(&["--timestamps"]).timestamps);
        assert!(output(&["--color", "always"]).color);
        assert!(!output(&["--color", "always", "--format", "json"]).color);
        assert!(parse(&["--hex", "--format", "json"]).is_err());
        assert!(parse(&["--raw", "--hex"]).is_err());
        let progress = |args: &[&str]| parse(args).expect("valid").into_config().progress;
        assert_eq!(progress(&["--progress"]), Some(Duration::from_secs(60)));
        assert_eq!(
            progress(&["--progress", "5s"]),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn color_follows_terminal_and_no_color() {
        assert!(ColorChoice::Auto.resolve(true, None));
        assert!(ColorChoice::Auto.resolve(true, Some("")));
        assert!(!ColorChoice::Auto.resolve(true, Some("1")));
        assert!(!ColorChoice::Auto.resolve(false, None));
        assert!(ColorChoice::Always.resolve(false, Some("1")));
        assert!(!ColorChoice::Never.resolve(true, None));
    }

    #[test]
    fn completions_and_man_stand_alone() {
        let extra = |args: &[&str]| parse(args).expect("valid").extra();
        assert_eq!(extra(&["--man"]), Some(Extra::Man));
        assert_eq!(
            extra(&["--completions", "zsh"]),
            Some(Extra::Completions(clap_complete::Shell::Zsh))
        );
        assert_eq!(extra(&[]), None);
        assert!(parse(&["--man", "--port", "1"]).is_err());
    }

    #[test]
    fn verbosity_steps_from_info() {
        let level = |args: &[&str]| parse(args).expect("valid").log_level();
        assert_eq!(level(&[]), LevelFilter::Info);
        assert_eq!(level(&["-v"]), LevelFilter::Debug);
        assert_eq!(level(&["-vvvv"]), LevelFilter::Trace);
        assert_eq!(level(&["-q"]), LevelFilter::Warn);
        assert_eq!(level(&["-qqq"]), LevelFilter::Off);
        assert!(parse(&["-v", "-q"]).is_err());
    }

    #[test]
    fn an_address_with_a_port_gets_a_hint() {
        let hint = |host: &str| parse_host(host).expect_err("a port in --host");
        assert_eq!(
            hint("127.0.0.1:8080"),
            "give the port with --port (--host 127.0.0.1 --port 8080)"
        );
        assert_eq!(
            hint("[::1]:8080"),
            "give the port with --port (--host ::1 --port 8080)"
        );
        assert_eq!(
            hint("localhost:80"),
            "give the port with --port (--host localhost --port 80)"
        );
        assert_eq!(hint(":8080"), "give the port with --port (--port 8080)");
        assert_eq!(split_port("::1"), None);
        assert_eq!(split_port("[::1]"), None);
        assert_eq!(split_port("localhost:http"), None);
    }

    #[test]
    fn ports_and_durations_say_what_they_take() {
        assert_eq!(parse_port("0"), Ok(0));
        assert_eq!(parse_port("65535"), Ok(65535));
        for port in ["-1", "70000", "http", ""] {
            let err = parse_port(port).expect_err("not a port");
            assert!(err.contains("0 to 65535"), "{port}: {err}");
        }
        let err = parse(&["-p", "-1"]).expect_err("negative port");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        let err = parse_duration("abc").expect_err("not a duration");
        assert!(err.contains("500ms, 90s, 2m or 1h30m, or 0"), "{err}");
        let err = parse_positive_duration("abc").expect_err("not a duration");
        assert!(err.contains("500ms, 90s, 2m or 1h30m"), "{err}");
    }

    #[test]
    fn raw_goes_with_text_but_not_json_or_hex() {
        let config = parse(&["--raw", "--format", "text"])
            .expect("raw text is the default made explicit")
            .into_config();
        assert_eq!(config.worker.output.style, Style::Raw);
        assert_eq!(config.worker.output.format, Format::Text);
        let err = parse(&["--raw", "--format", "json"]).expect_err("raw JSON");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["--format", "json", "--raw"]).expect_err("raw JSON");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["--raw", "--hex"]).expect_err("raw hex");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    /// Arguments updated from another command line (clap's `update_from`) are checked as
    /// parsed ones are.
    #[test]
    fn updated_arguments_are_checked_too() {
        let mut args = parse(&[]).expect("defaults");
        let err = args
            .try_update_from(["overhear", "--raw", "--format", "json"])
            .expect_err("raw JSON");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        args.try_update_from(["overhear", "--output", "out.log"])
            .expect("an output file");
        assert_eq!(args.output_path(), Some(std::path::Path::new("out.log")));
        assert_eq!(parse(&[]).expect("defaults").output_path(), None);
    }

    #[test]
    fn tls_flags_reach_the_config() {
        let config = parse(&[
            "--tls",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
            "--tls-alpn",
            "h2,http/1.1",
            "--tls-handshake-timeout",
            "3s",
        ])
        .expect("valid")
        .into_config();
        assert_eq!(
            config.listen,
            [Spec::Tls("127.0.0.1:7878".parse().expect("literal"))]
        );
        assert_eq!(
            config.tls,
            Some(TlsOptions {
                identity: Identity::Files {
                    cert: "c.pem".into(),
                    key: "k.pem".into()
                },
                client_ca: Some("ca.pem".into()),
                alpn: vec![String::from("h2"), String::from("http/1.1")],
                handshake_timeout: Duration::from_secs(3),
            })
        );
        let tls = |args: &[&str]| parse(args).expect("valid").into_config().tls;
        assert_eq!(
            tls(&["--tls", "--tls-cert-out", "made.pem"]).map(|t| t.identity),
            Some(Identity::Generated {
                cert_out: Some("made.pem".into())
            })
        );
        assert_eq!(tls(&[]), Some(TlsOptions::default()));
        for flag in ["--tls-cert-out", "--tls-client-ca", "--tls-alpn"] {
            let err = parse(&[flag, "x"]).expect_err("a TLS flag without TLS");
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{flag}");
            assert!(
                err.to_string().contains(&format!("{flag} sets up TLS")),
                "{err}"
            );
        }
        parse(&["--listen", "tls://127.0.0.1:0", "--tls-alpn", "h2"]).expect("a TLS listener");
    }

    #[test]
    fn greet_reads_escapes_unless_raw() {
        let greeting = |args: &[&str]| {
            let config = parse(args).expect("valid").into_config();
            config.worker.greeting.map(|m| m.bytes().to_vec())
        };
        assert_eq!(greeting(&[]), None);
        assert_eq!(
            greeting(&["--greet", "hi\\x21\\r\\n"]),
            Some(b"hi!\r\n".to_vec())
        );
        assert_eq!(
            greeting(&["--raw", "--greet", "hi\\x21"]),
            Some(b"hi\\x21".to_vec())
        );
        let err = parse(&["--greet", "a\\qb"]).expect_err("an unknown escape");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("the backslash at byte 2"), "{err}");
    }

    /// Colored output only where the messages go to a terminal: never into an `--output` file.
    #[test]
    fn color_is_for_a_terminal_stdout() {
        let color = |args: &[&str]| {
            parse(args)
                .expect("valid")
                .into_config()
                .worker
                .output
                .color
        };
        let no_color = std::env::var("NO_COLOR").ok();
        let terminal = std::io::stdout().is_terminal();
        assert_eq!(
            color(&[]),
            ColorChoice::Auto.resolve(terminal, no_color.as_deref())
        );
        assert!(!color(&["--output", "out.log"]));
        assert!(color(&["--output", "out.log", "--color", "always"]));
    }

    #[test]
    fn help_epilogue_fits_80_columns() {
        for line in epilogue().lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
        }
        assert!(epilogue().contains("mkdir -p ~/.local/share/bash-completion/completions\n"));
    }

    #[test]
    fn bash_gets_host_names_only_after_host_labels() {
        let files = r#"COMPREPLY=($(compgen -f "${cur}"))"#;
        let script = format!("  --host)\n    {files}\n  --output)\n    {files}\n");
        let done = complete_hostnames(&script, &[String::from("--host)")]);
        assert_eq!(
            done,
            format!(
                "  --host)\n    COMPREPLY=($(compgen -A hostname -- \"${{cur}}\"))\n  \
                 --output)\n    {files}\n"
            )
        );
    }

    /// The bash script completes host names after `--host` and nowhere else (file names stay
    /// file names); other shells get clap_complete's script as it is.
    #[test]
    fn completion_scripts_are_whole_and_bash_knows_host_names() {
        let script =
            String::from_utf8(completion_script(clap_complete::Shell::Bash)).expect("UTF-8");
        let after = |label: &str| {
            let mut lines = script.lines().skip_while(|line| line.trim() != label);
            lines.nth(1).map(str::trim)
        };
        assert_eq!(
            after("--host)"),
            Some(r#"COMPREPLY=($(compgen -A hostname -- "${cur}"))"#)
        );
        assert_eq!(script.matches("compgen -A hostname").count(), 1, "{script}");
        assert!(script.contains("--tls-cert"), "{script}");
        let zsh = String::from_utf8(completion_script(clap_complete::Shell::Zsh)).expect("UTF-8");
        assert!(zsh.starts_with("#compdef overhear\n"), "{zsh}");
        assert!(zsh.contains("--tls-cert"), "{zsh}");
    }

    /// The synopsis: a run with each option in brackets, its value named (optional values in
    /// brackets of their own, counted flags with dots), then each option that stands alone on
    /// a line of its own.
    #[test]
    fn the_synopsis_names_each_option_with_its_value() {
        let mut command = Args::command();
        command.build();
        // What the synopsis takes for granted.
        assert!(
            command
                .get_arguments()
                .all(|arg| !arg.is_hide_set() && !arg.is_positional())
        );
        let text = synopsis(&command);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [".SH SYNOPSIS", ".na", r"\%\fBoverhear\fR"],
            "{text}"
        );
        assert_eq!(lines.last(), Some(&".ad"), "{text}");
        for line in [
            r"\%[\fB\-\-host\fR\ \fIHOST\fR]",
            r"\%[\fB\-p\fR|\fB\-\-port\fR\ \fIPORT\fR]",
            r"\%[\fB\-u\fR|\fB\-\-udp\fR]",
            r"\%[\fB\-\-progress\fR\ [\fIDURATION\fR]]",
            r"\%[\fB\-v\fR|\fB\-\-verbose\fR...\&]",
            r"\%\fBoverhear\fR \%\fB\-\-completions\fR\ \fISHELL\fR",
            r"\%\fBoverhear\fR \%\fB\-\-man\fR",
            r"\%\fBoverhear\fR \%\fB\-h\fR|\fB\-\-help\fR",
        ] {
            assert_eq!(
                lines.iter().filter(|l| **l == line).count(),
                1,
                "{line}\n{text}"
            );
        }
        // The options that stand alone come last, each after a break.
        let alone = lines.iter().position(|l| *l == ".br").expect("a break");
        assert!(
            lines[..alone].iter().skip(3).all(|l| l.starts_with(r"\%[")),
            "{text}"
        );
        assert_eq!(
            lines[alone..].iter().filter(|l| **l == ".br").count(),
            4,
            "{text}"
        );
    }

    #[test]
    fn roff_text_is_escaped() {
        assert_eq!(roff_escape("-q it's \\x1b"), "\\-q it\\*(Aqs \\ex1b");
        assert_eq!(roff_escape("a\n.b\n'c"), "a\n\\&.b\n\\*(Aqc");
        assert_eq!(capitalized("listen"), "Listen");
    }

    #[test]
    fn manual_has_its_sections_once() {
        let page = String::from_utf8(manual_page()).expect("roff is UTF-8");
        for heading in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH DESCRIPTION",
            ".SH OPTIONS",
            ".SH \"OUTPUT FORMAT\"",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH EXAMPLES",
            ".SH VERSION",
        ] {
            assert_eq!(page.matches(heading).count(), 1, "{heading} in\n{page}");
        }
        assert!(!page.contains(".SH EXTRA"));
        assert_eq!(page.matches(ROFF_PREAMBLE).count(), 1);
        assert!(page.starts_with(ROFF_PREAMBLE));
    }
}
