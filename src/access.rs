//! `AccessRules`: which peers may connect, from `--allow` and `--deny` networks, as in ncat.
//! Pure: an address in, a verdict out.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Allowed and denied networks. Deny wins over allow; with no `--allow`, everyone not denied
/// may connect.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Why a peer was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The peer is in a `--deny` network.
    Denied(IpNet),
    /// `--allow` networks were given and the peer is in none of them.
    NotAllowed,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Denied(net) => write!(f, "denied by --deny {net}"),
            Denial::NotAllowed => f.write_str("not in any --allow network"),
        }
    }
}

impl AccessRules {
    /// Rules from the allowed and denied networks.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> AccessRules {
        AccessRules { allow, deny }
    }

    /// Whether any rule was given.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `peer` may connect. An IPv4 peer seen on an IPv6 socket (`::ffff:a.b.c.d`) is
    /// judged by its IPv4 address, so IPv4 rules hold on a dual-stack `--host ::`.
    ///
    /// # Errors
    /// The [`Denial`] saying why `peer` may not connect.
    pub fn check(&self, peer: IpAddr) -> Result<(), Denial> {
        let peer = peer.to_canonical();
        if let Some(net) = self.deny.iter().find(|net| net.contains(&peer)) {
            return Err(Denial::Denied(*net));
        }
        if self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer)) {
            Ok(())
        } else {
            Err(Denial::NotAllowed)
        }
    }
}

/// Parses a network for `--allow`/`--deny`: `10.0.0.0/8`, `fd00::/8`, or a bare address for a
/// single host.
///
/// # Errors
/// A message for clap when `text` is neither.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("'{text}' is not an address or network such as 10.0.0.0/8 or ::1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> AccessRules {
        let nets = |list: &[&str]| {
            list.iter()
                .map(|t| parse_network(t).expect("valid"))
                .collect()
        };
        AccessRules::new(nets(allow), nets(deny))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal address")
    }

    #[test]
    fn no_rules_let_everyone_in() {
        assert!(rules(&[], &[]).check(ip("203.0.113.9")).is_ok());
        assert!(rules(&[], &[]).is_open());
    }

    #[test]
    fn allow_lists_admit_only_their_networks() {
        let r = rules(&["10.0.0.0/8", "::1"], &[]);
        assert!(r.check(ip("10.1.2.3")).is_ok());
        assert!(r.check(ip("::1")).is_ok());
        assert_eq!(r.check(ip("11.0.0.1")), Err(Denial::NotAllowed));
        assert_eq!(r.check(ip("::2")), Err(Denial::NotAllowed));
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["127.0.0.0/8"], &["127.0.0.2"]);
        assert!(r.check(ip("127.0.0.1")).is_ok());
        let denied = r.check(ip("127.0.0.2")).expect_err("denied");
        assert_eq!(denied.to_string(), "denied by --deny 127.0.0.2/32");
    }

    #[test]
    fn mapped_ipv4_peers_meet_ipv4_rules() {
        let r = rules(&["127.0.0.0/8"], &[]);
        assert!(r.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(r.check(ip("::ffff:8.8.8.8")).is_err());
    }

    #[test]
    fn networks_parse_with_or_without_prefix() {
        assert_eq!(
            parse_network("10.1.2.3/8").expect("valid").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_network("::1").expect("valid").to_string(), "::1/128");
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("example").is_err());
    }
}
