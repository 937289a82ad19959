//! The command line: clap's `Args`, parsed and checked into a [`Config`]. clap types stop here.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use ipnet::IpNet;
use log::LevelFilter;

use crate::access::{AccessRules, parse_network};
use crate::config::{Config, DEFAULT_BACKLOG, DEFAULT_MAX_CONNS, DEFAULT_PORT};
use crate::format::{Format, OutputOptions, Style};
use crate::worker::WorkerSettings;

const EXAMPLES: &str = "\
Examples:
  overhear                          listen on 127.0.0.1:7878 for 2 minutes
  overhear --port 9000 --duration 0 listen on port 9000 until Ctrl-C
  overhear --host :: --duration 1h  listen on every IPv6 and IPv4 address for an hour
  overhear --format json -o log.jsonl  write one JSON object per event to log.jsonl
  overhear --hex --echo             hex-dump a binary protocol and echo every byte back
  nc 127.0.0.1 7878                 connect a client; each line it sends is printed as [N] line
  overhear --completions bash > /etc/bash_completion.d/overhear
  overhear --man > overhear.1       write the manual page

Exit status: 0 stopped as asked (timer, Ctrl-C/SIGTERM, output closed), 1 error (cannot listen,
output failed), 2 bad arguments, 130 a second Ctrl-C/SIGTERM during shutdown.";

/// Listen on a TCP port and print what every client sends, one numbered thread per client.
#[derive(Debug, Parser)]
#[command(name = "overhear", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Address to listen on: an IPv4 or IPv6 address, or a host name such as localhost
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    host: IpAddr,

    /// Port to listen on; 0 takes a free port (the bound one is logged)
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    port: u16,

    /// Stop after this long, e.g. 500ms, 90s, 2m, 1h30m; 0 runs until Ctrl-C/SIGTERM
    #[arg(short, long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Longest a worker waits in poll before checking its stop flag (stops wake it sooner)
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    poll_interval: Duration,

    /// Connections the kernel queues before overhear accepts them (capped by net.core.somaxconn)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..))]
    backlog: u32,

    /// Most clients connected at once; one more is closed at once with a warning
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS,
          value_parser = parse_count)]
    max_conns: usize,

    /// Disconnect a client that sends nothing for this long, e.g. 30s, 5m (default: never)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    idle_timeout: Option<Duration>,

    /// Accept only peers in this network (CIDR such as 10.0.0.0/8, or one address); repeatable
    #[arg(long, value_name = "CIDR", value_parser = parse_network)]
    allow: Vec<IpNet>,

    /// Refuse peers in this network (CIDR or one address); repeatable; wins over --allow
    #[arg(long, value_name = "CIDR", value_parser = parse_network)]
    deny: Vec<IpNet>,

    /// Longest message printed whole; longer ones are printed in pieces marked [N+]
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_size)]
    max_line: usize,

    /// Print message bytes unchanged instead of escaping control bytes and invalid UTF-8
    #[arg(long, conflicts_with_all = ["hex", "format"])]
    raw: bool,

    /// Output format: text lines "[N] message", or JSON Lines (one object per event)
    #[arg(long, value_enum, default_value_t = FormatChoice::Text)]
    format: FormatChoice,

    /// Show what clients send as a hex dump (offset, hex bytes, printable column)
    #[arg(long, conflicts_with = "format")]
    hex: bool,

    /// Start each output line with an RFC 3339 UTC time with milliseconds
    #[arg(long)]
    timestamps: bool,

    /// Color client numbers: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,

    /// Send every byte a client sends back to it
    #[arg(long)]
    echo: bool,

    /// Append messages to FILE instead of writing them to stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Log the time left and the clients connected every INTERVAL (default 1m when given)
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1m",
          value_parser = parse_positive_duration)]
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

    /// Log less on stderr (-q warnings and errors only, -qq errors only)
    #[arg(short, long, action = ArgAction::Count)]
    quiet: u8,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatChoice {
    Text,
    Json,
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
        match (self.completions, self.man) {
            (Some(shell), _) => Some(Extra::Completions(shell)),
            (None, true) => Some(Extra::Man),
            (None, false) => None,
        }
    }

    /// The file to append messages to, if not stdout.
    pub fn output_path(&self) -> Option<&std::path::Path> {
        self.output.as_deref()
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
        let index = 3 + i32::from(self.verbose) - i32::from(self.quiet);
        LEVELS[index.clamp(0, 5) as usize]
    }

    /// The validated configuration these arguments describe. Color is decided here, from
    /// `--color`, whether stdout is a terminal, and `NO_COLOR`.
    pub fn into_config(self) -> Config {
        let terminal = self.output.is_none() && std::io::stdout().is_terminal();
        let no_color = std::env::var("NO_COLOR").ok();
        let format = match (self.hex, self.format) {
            (true, _) => Format::Hex,
            (false, FormatChoice::Json) => Format::Json,
            (false, FormatChoice::Text) => Format::Text,
        };
        Config {
            addr: SocketAddr::new(self.host, self.port),
            duration: (!self.duration.is_zero()).then_some(self.duration),
            backlog: self.backlog,
            max_conns: self.max_conns,
            access: AccessRules::new(self.allow, self.deny),
            progress: self.progress,
            worker: WorkerSettings {
                poll_interval: self.poll_interval,
                idle_timeout: self.idle_timeout,
                max_line: self.max_line,
                output: OutputOptions {
                    format,
                    style: if self.raw { Style::Raw } else { Style::Escaped },
                    timestamps: self.timestamps,
                    color: format != Format::Json
                        && self.color.resolve(terminal, no_color.as_deref()),
                },
                echo: self.echo,
            },
        }
    }
}

/// An IP address, or a host name resolved to its first address.
fn parse_host(text: &str) -> Result<IpAddr, String> {
    let literal = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    if let Ok(ip) = literal.unwrap_or(text).parse() {
        return Ok(ip);
    }
    let mut addrs = (text, 0)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve host name: {}", crate::error::describe(&err)))?;
    addrs
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| String::from("the host name has no address"))
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

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(String::from("must be more than 0")),
        Ok(d) => Ok(d),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert_eq!(config.addr, "127.0.0.1:7878".parse().expect("literal"));
        assert_eq!(config.duration, Some(Duration::from_secs(120)));
        assert_eq!(config.worker.poll_interval, Duration::from_secs(5));
        assert_eq!(config.worker.output.style, Style::Escaped);
        assert_eq!(config.worker.output.format, Format::Text);
        assert!(!config.worker.echo);
        assert_eq!(config.progress, None);
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
        let ip = |host: &str| {
            parse(&["--host", host])
                .expect("valid")
                .into_config()
                .addr
                .ip()
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
}
