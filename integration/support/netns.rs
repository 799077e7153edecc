//! A network namespace joined to this one by a veth pair, for partitions that drop packets
//! instead of closing connections: `cut` takes the link down (nothing arrives, nothing is
//! refused: each side learns of it only by its own timeouts), `heal` brings it up again.
//! Created with `ip netns`/`ip link` when this machine allows it (root, veth support); where it
//! does not, [`NetNs::create`] says why and the test skips. Deleted when dropped; namespaces of
//! earlier test binaries that died are deleted on the next creation.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

pub struct NetNs {
    name: String,
    /// The host end of the veth pair (stays in this namespace).
    host_link: String,
    /// This namespace's address on the link: reachable from inside the namespace.
    pub host_ip: Ipv4Addr,
    /// The namespace's address on the link.
    pub inner_ip: Ipv4Addr,
}

const PREFIX: &str = "herald-it-";

impl NetNs {
    /// A namespace for this test binary and `tag` (a few letters), or why there cannot be one.
    pub fn create(tag: &str) -> Result<NetNs, String> {
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-{tag}");
        // Interface names are at most 15 bytes.
        let host_link = format!("hv{}{tag}", pid % 100_000);
        let inner_link = format!("nv{}{tag}", pid % 100_000);
        let net = (pid % 250) as u8;
        let host_ip = Ipv4Addr::new(10, 251, net, 1);
        let inner_ip = Ipv4Addr::new(10, 251, net, 2);
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name,
            host_link,
            host_ip,
            inner_ip,
        };
        let peer = inner_link.as_str();
        ip(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ])?;
        ip(&["link", "set", peer, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &ns.host_link,
        ])?;
        ip(&["link", "set", &ns.host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{inner_ip}/30"), "dev", peer])?;
        inside(&["link", "set", peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Makes `command` run inside the namespace (it joins it between fork and exec).
    pub fn enter(&self, command: &mut Command) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))
            .expect("open the namespace's handle");
        // SAFETY: setns is async-signal-safe; the file stays open in the closure until exec
        // (its descriptor is close-on-exec, so the program does not inherit it).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Takes the link down: packets both ways are dropped until [`NetNs::heal`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).expect("take the veth link down");
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]).expect("bring the veth link up");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`; the error says what failed and what ip said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces of test binaries that are gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        // SAFETY: plain syscall.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
