//! Defaults that come from the host: the address to advertise (the first non-loopback IPv4
//! address of an interface that is up) and a stable instance id (host name and port, so a
//! restarted container keeps its id).

use std::net::Ipv4Addr;

use crate::layout::InstanceId;

/// The first non-loopback IPv4 address of an interface that is up, in the kernel's order.
pub fn default_address() -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        let flags = ifa.ifa_flags as libc::c_int;
        if ifa.ifa_addr.is_null() || flags & libc::IFF_UP == 0 || flags & libc::IFF_LOOPBACK != 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        if unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && !ip.is_unspecified() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found
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
