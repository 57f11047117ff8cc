//! Where a recipient goes, judged on its final destination, and who may relay.

use std::net::IpAddr;
use std::str::FromStr;

use smtp_proto::{Domain, ForwardPath, Path, ReversePath, RouteStyle};

use crate::directory::Directory;

/// What to do with source routes (RFC 788 3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceRoutes {
    /// RFC 788: a relay first in the route removes itself and adds itself to the reverse-path,
    /// and the message goes to the next hop named in the route.
    Honor,
    /// RFC 5321 3.6.1: routes are dropped and mail goes to the mailbox's domain. The safe default
    /// for Internet-facing use.
    #[default]
    Strip,
}

impl FromStr for SourceRoutes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "honor" => Ok(SourceRoutes::Honor),
            "strip" => Ok(SourceRoutes::Strip),
            _ => Err(format!("expected honor or strip, got {s:?}")),
        }
    }
}

/// An IP network in CIDR notation, e.g. `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// The loopback networks, trusted by default.
    pub fn loopback() -> Vec<Cidr> {
        vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")]
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("bad network address in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().map_err(|_| format!("bad prefix in {s:?}"))? };
        if prefix > max {
            return Err(format!("prefix too long in {s:?}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// Where a recipient's mail goes from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Delivered here, to this local part.
    Local(String),
    /// Relayed: the final destination is elsewhere. `next_hop` is the host to send to (the next
    /// route hop in honor mode, else the mailbox's domain); `path` is the forward-path to send.
    Remote {
        /// Where to send next.
        next_hop: Domain,
        /// The forward-path as it leaves this relay.
        path: Path,
    },
    /// A local part with routing characters (`%`, `!`, `@`) addressed to a local domain: an old
    /// relay trick that is not interpreted here.
    Unsupported,
}

/// The names this host answers to: its host name and the local domains.
pub fn is_me(d: &Domain, hostname: &str, dir: &Directory) -> bool {
    dir.is_local_domain(d) || matches!(d, Domain::Name(n) if n.eq_ignore_ascii_case(hostname))
}

/// Classifies a forward-path. In honor mode, leading route hops that name this host are
/// removed (RFC 788 3.6) and returned so the caller can add them to the reverse-path.
pub fn classify(to: &ForwardPath, hostname: &str, dir: &Directory, mode: SourceRoutes) -> (Destination, Vec<Domain>) {
    let path = match to {
        ForwardPath::Postmaster => return (Destination::Local("postmaster".into()), Vec::new()),
        ForwardPath::Path(p) => p,
    };
    let mut route = match mode {
        SourceRoutes::Strip => Vec::new(),
        SourceRoutes::Honor => path.route.clone(),
    };
    let mut removed = Vec::new();
    while route.first().is_some_and(|h| is_me(h, hostname, dir)) {
        removed.push(route.remove(0));
    }
    let mailbox = &path.mailbox;
    let rewritten = Path { route: route.clone(), mailbox: mailbox.clone(), style: path.style };
    if let Some(next) = route.first() {
        return (Destination::Remote { next_hop: next.clone(), path: rewritten }, removed);
    }
    if !is_me(mailbox.domain(), hostname, dir) {
        return (Destination::Remote { next_hop: mailbox.domain().clone(), path: rewritten }, removed);
    }
    let local = mailbox.local_part();
    if local.contains(['%', '!', '@']) {
        return (Destination::Unsupported, removed);
    }
    (Destination::Local(local.into_owned()), removed)
}

/// Where one queued recipient goes: decided once, when the message is accepted (or loaded
/// from the queue after a restart), and used for every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A local user's mailbox (or terminal, for SEND/SOML/SAML).
    Mailbox(String),
    /// The next hop over SMTP.
    Remote(Domain),
    /// Not deliverable from here: fails with this reply.
    Refused(smtp_proto::Reply),
}

/// Routes a queued recipient (aliases were expanded when it was queued).
pub fn route_of(to: &ForwardPath, hostname: &str, dir: &Directory, mode: SourceRoutes) -> Route {
    use crate::directory::{Lookup, Target};
    let refused = |code, (c, s, d), text| {
        Route::Refused(smtp_proto::Reply::new(code, Some(smtp_proto::EnhancedCode::new(c, s, d)), text))
    };
    match classify(to, hostname, dir, mode).0 {
        Destination::Local(name) => match dir.lookup(&name) {
            Lookup::User(Target::Local(u)) => Route::Mailbox(u),
            _ if name.eq_ignore_ascii_case("postmaster") => Route::Mailbox("postmaster".into()),
            _ => refused(550, (5, 1, 1), "No such user here"),
        },
        Destination::Remote { next_hop, .. } => Route::Remote(next_hop),
        Destination::Unsupported => refused(550, (5, 1, 3), "Unsupported address"),
    }
}

/// RFC 788 3.6: the relay adds the hops it removed, in front of the reverse-path.
pub fn prepend_route(from: &ReversePath, removed: &[Domain]) -> ReversePath {
    match from {
        ReversePath::Path(p) if !removed.is_empty() => {
            let mut route: Vec<Domain> = removed.iter().rev().cloned().collect();
            route.extend(p.route.iter().cloned());
            let style = if p.route.is_empty() { RouteStyle::Comma } else { p.style };
            ReversePath::Path(Path { route, mailbox: p.mailbox.clone(), style })
        }
        other => other.clone(),
    }
}

/// Drops the route of a reverse-path (strip mode).
pub fn strip_route(from: &ReversePath) -> ReversePath {
    match from {
        ReversePath::Path(p) => ReversePath::Path(Path::new(p.mailbox.clone())),
        ReversePath::Null => ReversePath::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        Directory::new(["us.test".to_string()], Vec::<String>::new())
    }

    fn fp(s: &str) -> ForwardPath {
        ForwardPath::Path(Path::parse(s).unwrap())
    }

    #[test]
    fn rfc788_relay_example() {
        // At A: FROM:<X@Y> TO:<@A,@B,C@D> goes on to B as FROM:<@A,X@Y> TO:<@B,C@D>.
        let d = Directory::new(["a".to_string()], Vec::<String>::new());
        let (dest, removed) = classify(&fp("<@A,@B,C@D>"), "a", &d, SourceRoutes::Honor);
        let Destination::Remote { next_hop, path } = dest else { panic!() };
        assert_eq!(next_hop.to_string(), "B");
        assert_eq!(path.to_string(), "<@B,C@D>");
        let from = prepend_route(&ReversePath::Path(Path::parse("<X@Y>").unwrap()), &removed);
        assert_eq!(from.to_string(), "<@A,X@Y>");
    }

    #[test]
    fn final_destination_decides() {
        let d = dir();
        let remote = |s: &str, mode| matches!(classify(&fp(s), "mx.us.test", &d, mode).0, Destination::Remote { .. });
        assert!(remote("<@us.test:b@other.test>", SourceRoutes::Strip));
        assert!(remote("<@us.test:b@other.test>", SourceRoutes::Honor));
        assert!(remote("<@other.test:b@us.test>", SourceRoutes::Honor), "honor: route goes elsewhere first");
        assert!(!remote("<@other.test:b@us.test>", SourceRoutes::Strip));
        assert!(remote("<b@[127.0.0.1]>", SourceRoutes::Strip), "address literals are not local");
        for trick in ["<b%other.test@us.test>", "<other.test!b@us.test>", "<\"b@other.test\"@us.test>"] {
            assert_eq!(classify(&fp(trick), "mx", &d, SourceRoutes::Strip).0, Destination::Unsupported, "{trick}");
        }
        assert_eq!(classify(&fp("<Bob@US.TEST>"), "mx", &d, SourceRoutes::Strip).0, Destination::Local("Bob".into()));
    }

    #[test]
    fn cidr() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!(Cidr::loopback()[0].contains("127.0.0.2".parse().unwrap()));
    }
}
