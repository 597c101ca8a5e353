//! IP networks in CIDR notation (`10.0.0.0/8`, `fc00::/7`, a bare address for one
//! host), for `metrics.allowed_networks`. A network is compared with a client address
//! after that address is canonicalised: on a dual-stack listener (`[::]:8080`) an IPv4
//! client arrives as `::ffff:10.1.2.3`, and must match `10.0.0.0/8` like it would on
//! an IPv4 listener. For the same reason an IPv4-mapped network in the configuration
//! (`::ffff:10.0.0.0/104`) is read as the IPv4 network it denotes.
//!
//! Parsing is strict where a typo would silently widen or narrow access: a prefix
//! longer than the address, or an address with bits set beyond the prefix
//! (`192.168.1.0/16`: did the operator mean /16 or /24?), is an error that says what
//! the network would be.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network: an address with every bit beyond `prefix` zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses compare as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// Why a text is not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP network (e.g. 10.0.0.0/8 or fc00::/7)")]
    NotANetwork(String),
    #[error("{text:?}: the prefix length must be 0 to {max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has bits set beyond the prefix; the network is {network}")]
    HostBits { text: String, network: String },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::NotANetwork(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            // Plain digits only: `u8::from_str` would also take `+8`.
            Some(p) => p
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u8>().ok())
                .flatten()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    text: s.to_string(),
                    max,
                })?,
        };
        // `::ffff:a.b.c.d/n` with n ≥ 96 is the IPv4 network a.b.c.d/(n - 96).
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            other => (other, prefix),
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask32(u32::from(a), prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(a), prefix))),
        };
        if network != addr {
            return Err(CidrError::HostBits {
                text: s.to_string(),
                network: format!("{network}/{prefix}"),
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_by_prefix() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!net("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(net("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("fc00::/7").contains(ip("fd12:3456::1")));
        assert!(!net("fc00::/7").contains(ip("fe00::1")));
        assert!(net("fe80::/10").contains(ip("fe80::1")));
        assert!(net("::1/128").contains(ip("::1")));
        assert!(!net("::1/128").contains(ip("::2")));
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("10.0.0.0/8").contains(ip("::ffff:192.168.0.1")));
        // ... and never as the IPv6 network they are written in.
        assert!(!net("::/0").contains(ip("::ffff:10.1.2.3")));
        // A mapped network in the configuration is the IPv4 network.
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
    }

    #[test]
    fn typos_are_refused_saying_why() {
        for (bad, says) in [
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/+8", "0 to 32"),
            ("10.0.0.0/8/8", "0 to 32"),
            ("10.0.0/8", "not an IP network"),
            ("localhost", "not an IP network"),
            ("", "not an IP network"),
            ("192.168.1.0/16", "the network is 192.168.0.0/16"),
            ("fe80::1/10", "the network is fe80::/10"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn round_trips_as_text() {
        for s in ["10.0.0.0/8", "::1/128", "fc00::/7", "0.0.0.0/0"] {
            assert_eq!(net(s).to_string(), s);
        }
        assert_eq!(net("127.0.0.1").to_string(), "127.0.0.1/32");
    }
}
