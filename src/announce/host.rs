//! Defaults that come from the host: the address to advertise and a stable instance id (host
//! name and port, so a restarted container keeps its id).
//!
//! The address is the one this host uses to reach ZooKeeper (the kernel's route to it: whoever
//! reaches ZooKeeper over that path can usually reach the service too). When ZooKeeper is on
//! loopback, or cannot be resolved, an interface's address is taken instead: running, not
//! loopback, not a bridge (`docker0`, `br-…`: the host side of containers), not link-local;
//! IPv4 first, then a global IPv6 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::layout::InstanceId;

/// The address to advertise: the source address of the route to the first ZooKeeper host of
/// `hosts` (a connect string's host list) that resolves, unless that is loopback; else
/// [`interface_address`].
pub fn default_address(hosts: &str) -> Option<IpAddr> {
    route_source(hosts)
        .filter(usable)
        .or_else(interface_address)
}

/// The local address the kernel would send from to reach a host of `hosts`. A UDP socket's
/// `connect` only picks the route: nothing is sent.
fn route_source(hosts: &str) -> Option<IpAddr> {
    hosts.split(',').find_map(|entry| {
        let bare = entry
            .strip_prefix("tcp://")
            .or_else(|| entry.strip_prefix("tcp+tls://"))
            .unwrap_or(entry);
        let with_port = match bare.matches(':').count() {
            _ if bare.starts_with('[') && bare.contains("]:") => bare.to_owned(),
            _ if bare.starts_with('[') => format!("{bare}:2181"),
            0 => format!("{bare}:2181"),
            1 => bare.to_owned(),
            _ => format!("[{bare}]:2181"),
        };
        let target: SocketAddr = with_port.to_socket_addrs().ok()?.next()?;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).ok()?;
        socket.connect(target).ok()?;
        Some(socket.local_addr().ok()?.ip())
    })
}

/// Whether `ip` is worth advertising to other hosts.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// An interface address as [`pick`] weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    running: bool,
    loopback: bool,
    bridge: bool,
    ip: IpAddr,
}

/// The first usable address of a running, non-loopback, non-bridge interface, IPv4 before
/// IPv6, in the kernel's order otherwise.
fn pick(candidates: &[Candidate]) -> Option<IpAddr> {
    let fit = |c: &&Candidate| c.running && !c.loopback && !c.bridge && usable(&c.ip);
    let v4 = candidates.iter().filter(fit).find(|c| c.ip.is_ipv4());
    v4.or_else(|| candidates.iter().find(fit)).map(|c| c.ip)
}

/// [`pick`] over this host's interfaces.
pub fn interface_address() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut candidates = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        let ip = match unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = ifa.ifa_flags as libc::c_int;
        candidates.push(Candidate {
            running: flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0,
            loopback: flags & libc::IFF_LOOPBACK != 0,
            bridge: std::path::Path::new("/sys/class/net")
                .join(&name)
                .join("bridge")
                .exists(),
            ip,
        });
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    pick(&candidates)
}

/// This host's name (in a container: the container's).
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// `<host>-<port>`, with characters an id may not hold replaced by `-`.
pub fn default_id(host: &str, port: u16) -> Option<InstanceId> {
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '_', '-']);
    let suffix = format!("-{port}");
    let keep = crate::layout::MAX_NAME_LEN.saturating_sub(suffix.len());
    let head: String = cleaned.chars().take(keep).collect();
    format!("{head}{suffix}")
        .parse()
        .ok()
        .filter(|_| !head.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_address_skips_what_others_cannot_reach() {
        let c = |running, loopback, bridge, ip: &str| Candidate {
            running,
            loopback,
            bridge,
            ip: ip.parse().unwrap(),
        };
        let table: &[(&[Candidate], Option<&str>)] = &[
            (
                &[
                    c(true, true, false, "127.0.0.1"),
                    c(true, false, false, "10.0.0.5"),
                ],
                Some("10.0.0.5"),
            ),
            // docker0 comes first in kernel order: skipped.
            (
                &[
                    c(true, false, true, "172.17.0.1"),
                    c(true, false, false, "10.0.0.5"),
                ],
                Some("10.0.0.5"),
            ),
            // A cable unplugged: up but not running.
            (
                &[
                    c(false, false, false, "10.0.0.9"),
                    c(true, false, false, "10.0.0.5"),
                ],
                Some("10.0.0.5"),
            ),
            (
                &[
                    c(true, false, false, "169.254.3.4"),
                    c(true, false, false, "10.0.0.5"),
                ],
                Some("10.0.0.5"),
            ),
            // IPv4 first, wherever it is; then a global IPv6 address, never link-local.
            (
                &[
                    c(true, false, false, "2001:db8::5"),
                    c(true, false, false, "10.0.0.5"),
                ],
                Some("10.0.0.5"),
            ),
            (
                &[
                    c(true, false, false, "fe80::1"),
                    c(true, false, false, "2001:db8::5"),
                ],
                Some("2001:db8::5"),
            ),
            (
                &[
                    c(true, true, false, "::1"),
                    c(true, false, true, "10.0.0.1"),
                ],
                None,
            ),
        ];
        for (candidates, want) in table {
            let want = want.map(|w| w.parse::<IpAddr>().unwrap());
            assert_eq!(pick(candidates), want, "{candidates:?}");
        }
    }

    #[test]
    fn the_route_to_zookeeper_gives_the_source_address() {
        // Loopback ZooKeeper: the route's source is loopback, which is not advertised.
        assert_eq!(
            route_source("127.0.0.1:2181"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            route_source("tcp://[::1]:2181,h2"),
            route_source("[::1]:2181")
        );
        assert_eq!(default_address("127.0.0.1:2181"), interface_address());
        assert_eq!(route_source("no-such-host.invalid:2181"), None);
    }

    #[test]
    fn ids_are_host_and_port() {
        let id = |h: &str| default_id(h, 5432).map(|i| i.to_string());
        assert_eq!(id("db1").as_deref(), Some("db1-5432"));
        assert_eq!(id("a1b2c3d4e5f6").as_deref(), Some("a1b2c3d4e5f6-5432"));
        assert_eq!(id("my host!").as_deref(), Some("my-host--5432"));
        assert_eq!(id("-x").as_deref(), Some("x-5432"));
        assert_eq!(id(""), None);
        assert_eq!(id(&"h".repeat(300)).map(|i| i.len()), Some(128));
    }
}
