//! A standalone ZooKeeper of one test's own, that the test can stop (SIGKILL or SIGTERM) and
//! start again on the same data dir and port: for what a server restart does to a client.
//! Started by `scripts/zk serve` (its zoo.cfg: tickTime 200, maxSessionTimeout 60000) on a free
//! loopback port, with a data dir per test under the binary's fixture dir. Like the shared
//! fixture's server it gets SIGKILL from the kernel when the test binary dies, even on panic or
//! SIGKILL; dropping it kills it too. The waits are async, so the clients under test keep running.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, four_letter, free_port, spawn_server};

/// How long a server may take to start serving (a JVM start, slower on a busy machine).
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct Standalone {
    pub port: u16,
    pub dir: PathBuf,
    running: Mutex<Option<Running>>,
}

/// The server process and the news of its exit from the thread that spawned it.
struct Running {
    pid: u32,
    exited: Receiver<()>,
}

impl Standalone {
    /// Starts a server for the test `name` on a free port with an empty data dir and waits
    /// until it serves.
    pub async fn start(name: &str) -> Standalone {
        let dir = std::env::temp_dir()
            .join("herald-it")
            .join(std::process::id().to_string())
            .join("standalone")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut last = String::new();
        for _attempt in 0..3 {
            // The port is free when picked; another process may take it before the server
            // binds it, then try another.
            let server = Standalone {
                port: free_port(),
                dir: dir.clone(),
                running: Mutex::new(None),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!(
            "could not start a standalone ZooKeeper in {}: {last}",
            dir.display()
        );
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (`libc::SIGKILL`, `libc::SIGTERM`) to the server and waits until the
    /// process is gone.
    pub async fn stop(&self, signal: i32) {
        let running = self
            .running
            .lock()
            .unwrap()
            .take()
            .expect("stop: the server is running");
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(running.pid as libc::pid_t, signal) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            match running.exited.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper pid {} did not exit within {DEADLINE:?} of signal {signal}",
                running.pid
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the stopped server again on the same data dir and port, and waits until it
    /// serves.
    pub async fn restart(&self) {
        if let Err(why) = self.spawn_and_wait().await {
            panic!(
                "restart the standalone ZooKeeper on port {}: {why}",
                self.port
            );
        }
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn spawn_and_wait(&self) -> Result<(), String> {
        assert!(
            self.running.lock().unwrap().is_none(),
            "the server is already running"
        );
        let running = spawn(&self.dir, self.port)?;
        let pid = running.pid;
        *self.running.lock().unwrap() = Some(running);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if four_letter(self.port, "srvr").contains("Mode:") {
                return Ok(());
            }
            let exited = {
                let running = self.running.lock().unwrap();
                let running = running.as_ref().expect("started above");
                !matches!(running.exited.try_recv(), Err(TryRecvError::Empty))
            };
            if exited || Instant::now() >= deadline {
                if let Some(running) = self.running.lock().unwrap().take() {
                    // SAFETY: plain syscall on our own child.
                    unsafe { libc::kill(running.pid as libc::pid_t, libc::SIGKILL) };
                    let _ = running.exited.recv_timeout(Duration::from_secs(5));
                }
                let what = if exited {
                    "exited"
                } else {
                    "did not serve within 60s"
                };
                return Err(format!(
                    "ZooKeeper pid {pid} on port {} {what}; its log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().unwrap().take() {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(running.pid as libc::pid_t, libc::SIGKILL) };
            let _ = running.exited.recv_timeout(Duration::from_secs(5));
        }
        // Keep the data and the log of a failed test.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The server process, by the shared fixture's spawner.
fn spawn(dir: &Path, port: u16) -> Result<Running, String> {
    let (pid, exited) = spawn_server(dir, port, &[])?;
    Ok(Running { pid, exited })
}
