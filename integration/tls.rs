//! herald over TLS against a real ZooKeeper 3.8 serving a `secureClientPort` (netty) that
//! requires client certificates, with certificates made here by openssl and keytool: commands
//! and a sidecar connect with a client certificate, also after a session expiry; a plaintext
//! client, a wrong CA, a missing or untrusted client certificate and a port without TLS each
//! fail with their own one-line error; bad TLS files are refused before connecting (exit 2).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{Daemon, *};
use zookeeper_client as zkc;

/// The test binary's TLS ZooKeeper: plaintext on `port` (for checks from the side), TLS on
/// `secure_port`, client certificates required.
struct TlsZk {
    port: u16,
    secure_port: u16,
    /// Certificates and keys: ca.pem, client.pem/.key (CN=herald, signed by ca), other-ca.pem,
    /// rogue.pem/.key (signed by other-ca, which the server does not trust).
    certs: PathBuf,
}

static TLS_ZK: OnceLock<TlsZk> = OnceLock::new();

/// The test binary's TLS ZooKeeper, started on first use.
fn tls_zk() -> &'static TlsZk {
    TLS_ZK.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join("herald-it")
            .join(std::process::id().to_string())
            .join("tls");
        let _ = std::fs::remove_dir_all(&dir);
        let certs = dir.join("certs");
        make_certificates(&certs);
        let mut last = String::new();
        for _attempt in 0..3 {
            let (port, secure_port) = (free_port(), free_port());
            let extra = [
                "--secure-port".to_owned(),
                secure_port.to_string(),
                "--tls-dir".to_owned(),
                certs.display().to_string(),
            ];
            let server = dir.join("server");
            match spawn_server(&server, port, &extra)
                .and_then(|(pid, _exited)| wait_tls_serving(&server, &certs, secure_port, pid))
            {
                Ok(()) => {
                    return TlsZk {
                        port,
                        secure_port,
                        certs,
                    };
                }
                Err(why) => last = why,
            }
        }
        panic!("could not start the TLS ZooKeeper: {last}");
    })
}

impl TlsZk {
    fn tls_connect(&self) -> String {
        format!("tcp+tls://127.0.0.1:{}", self.secure_port)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.certs.join(name)
    }

    /// herald at `zk` with the CA, and the client identity when `identity` names one
    /// (`client`, `rogue`).
    fn herald(&self, zk: &str, root: &str, identity: Option<&str>) -> Command {
        let mut command = herald_at(zk, root);
        command.env("HERALD_ZK_TLS_CA", self.file("ca.pem"));
        if let Some(id) = identity {
            command
                .env("HERALD_ZK_TLS_CERT", self.file(&format!("{id}.pem")))
                .env("HERALD_ZK_TLS_KEY", self.file(&format!("{id}.key")));
        }
        command
    }
}

/// The shell that makes the CAs, the server's key and trust stores and the client
/// certificates. The server certificate names both 127.0.0.1 and localhost (the client checks
/// the host dialled against its subjectAltName); leaf certificates are not CAs.
const MAKE_CERTIFICATES: &str = r#"
set -eu
pw=herald-test-store
printf %s "$pw" > password
ca() { # NAME CN
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days 2 \
    -subj "/O=herald tests/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # NAME CN CA EXT
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/O=herald tests/CN=$2" 2>/dev/null
  printf '%b' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -out "$1.pem" -days 2 \
    -extfile "$1.ext" 2>/dev/null
}
ca ca herald-test-ca
ca other-ca other-test-ca
leaf server localhost ca 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n'
leaf client herald ca 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
leaf rogue herald other-ca 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name server \
  -out server.p12 -passout "pass:$pw"
# A trust store from openssl pkcs12 shows Java no entries: keytool makes it.
keytool -importcert -noprompt -alias ca -file ca.pem -keystore trust.p12 -storetype PKCS12 \
  -storepass "$pw" >/dev/null 2>&1
chmod 600 ./*.key
"#;

fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("sh")
        .args(["-c", MAKE_CERTIFICATES])
        .current_dir(dir)
        .output()
        .expect("run sh to make the test certificates");
    assert!(
        out.status.success(),
        "making the test certificates failed: {}",
        describe(&out)
    );
}

/// Waits until `srvr`, sent over a verified TLS connection with the client certificate,
/// answers with a mode: a port that accepts TCP is no sign that TLS works.
fn wait_tls_serving(dir: &Path, certs: &Path, port: u16, pid: u32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = Command::new("timeout")
            .args(["5", "openssl", "s_client", "-quiet", "-verify_return_error"])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(certs.join("ca.pem"))
            .arg("-cert")
            .arg(certs.join("client.pem"))
            .arg("-key")
            .arg(certs.join("client.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().map(|mut i| i.write_all(b"srvr"));
                child.wait_with_output()
            })
            .map_err(|e| format!("run openssl s_client: {e}"))?;
        if String::from_utf8_lossy(&out.stdout).contains("Mode:") {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            let log = std::fs::read_to_string(dir.join("zookeeper.log")).unwrap_or_default();
            return Err(format!("ZooKeeper exited: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    Err(format!(
        "ZooKeeper's TLS port {port} did not answer srvr within 60s; last openssl error: {last}"
    ))
}

/// A client on the server's plaintext port, to look at what herald did over TLS.
async fn plain_client() -> zkc::Client {
    zkc::Client::connector()
        .connect(&format!("127.0.0.1:{}", tls_zk().port))
        .await
        .expect("connect to the TLS server's plaintext port")
}

/// Runs herald to completion; it must fail with `code` and a one-line error holding every
/// one of `needles`.
fn fails_with(command: &mut Command, code: i32, needles: &[&str]) {
    let out = run(command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    let last = stderr.lines().last().unwrap_or_default();
    for needle in needles {
        assert!(
            last.contains(needle),
            "expected {needle:?} in the error line; got: {}",
            describe(&out)
        );
    }
}

#[test]
fn put_and_resolve_over_tls_with_a_client_certificate() {
    let z = tls_zk();
    let root = root("tls-put");
    let out = run(z.herald(&z.tls_connect(), &root, Some("client")).args([
        "put",
        "DATABASE_URL",
        "postgres://db/app",
    ]));
    assert!(out.status.success(), "put: {}", describe(&out));
    let out = run(z
        .herald(&z.tls_connect(), &root, Some("client"))
        .args(["resolve", "DATABASE_URL"]));
    assert!(out.status.success(), "resolve: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "postgres://db/app");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "a key only its owner reads is not warned about: {}",
        describe(&out)
    );
}

#[test]
fn a_key_others_can_read_is_warned_about_without_its_content() {
    let z = tls_zk();
    let s = Scratch::new("tls-open-key");
    let key = s.path("open.key");
    std::fs::copy(z.file("client.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run(z
        .herald(&z.tls_connect(), &root("tls-open-key"), Some("client"))
        .env("HERALD_ZK_TLS_KEY", &key)
        .args(["resolve", "--default", "x", "NOTHING"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr.contains("--zk-tls-key/HERALD_ZK_TLS_KEY can be read by group or others")
            && stderr.contains("chmod 600"),
        "{}",
        describe(&out)
    );
    let body = std::fs::read_to_string(&key).unwrap();
    let secret_line = body.lines().nth(1).unwrap();
    assert!(!stderr.contains(secret_line), "key material logged");
}

#[tokio::test]
async fn announce_registers_over_tls_and_again_after_a_session_expiry() {
    let z = tls_zk();
    let root = root("tls-announce");
    let s = Scratch::new("tls-announce");
    let path = format!("{root}/services/api/a1");
    let proxy = Proxy::start(z.secure_port);
    let watcher = plain_client().await;
    let agent = Daemon::spawn(
        z.herald(
            &format!("tcp+tls://127.0.0.1:{}", proxy.port),
            &root,
            Some("client"),
        )
        .args(["announce", "--service", "api", "--id", "a1"])
        .args(["--address", "127.0.0.1", "--port", "8080"])
        .args(["--session-timeout", "1s"])
        .arg("--control-dir")
        .arg(s.path("control")),
    );
    let first = appears(&watcher, &path).await;
    let (_, _, gone) = watcher.get_and_watch_data(&path).await.unwrap();
    proxy.partition();
    let event = tokio::time::timeout(DEADLINE, gone.changed())
        .await
        .expect("the session expires while partitioned");
    assert_eq!(event.event_type, zkc::EventType::NodeDeleted);
    proxy.heal();
    // The new session is established over TLS with the same files.
    agent.wait_log("new ZooKeeper session", 1).await;
    let second = appears(&watcher, &path).await;
    assert_ne!(
        second.ephemeral_owner, first.ephemeral_owner,
        "registered again by the new session"
    );
    let key = std::fs::read_to_string(z.file("client.key")).unwrap();
    agent.assert_never_logged(&[key.lines().nth(1).unwrap()]);
}

/// Waits (by watch, with a deadline) until `path` exists; returns its stat.
async fn appears(client: &zkc::Client, path: &str) -> zkc::Stat {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (stat, watcher) = client.check_and_watch_stat(path).await.unwrap();
            if let Some(stat) = stat {
                return stat;
            }
            watcher.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} did not appear within {DEADLINE:?}"))
}

#[test]
fn a_plaintext_client_to_the_tls_port_is_refused_clearly() {
    let z = tls_zk();
    fails_with(
        herald_at(&format!("127.0.0.1:{}", z.secure_port), &root("tls-plain")).args([
            "--connect-timeout",
            "3s",
            "resolve",
            "X",
        ]),
        5,
        &["closed the connection before a session", "tcp+tls://"],
    );
}

#[test]
fn tls_to_a_plaintext_port_says_the_port_does_not_speak_tls() {
    let z = tls_zk();
    fails_with(
        z.herald(
            &format!("tcp+tls://127.0.0.1:{}", z.port),
            &root("tls-to-plain"),
            Some("client"),
        )
        .args(["--connect-timeout", "3s", "resolve", "X"]),
        5,
        &["TLS", "secureClientPort"],
    );
}

#[test]
fn a_wrong_ca_names_the_certificate_problem() {
    let z = tls_zk();
    fails_with(
        z.herald(&z.tls_connect(), &root("tls-wrong-ca"), Some("client"))
            .env("HERALD_ZK_TLS_CA", z.file("other-ca.pem"))
            .args(["--connect-timeout", "3s", "resolve", "X"]),
        5,
        &[
            "the server's certificate is not signed by a CA in --zk-tls-ca",
            "other-ca.pem",
            "UnknownIssuer",
        ],
    );
}

#[test]
fn no_client_certificate_says_the_server_requires_one() {
    let z = tls_zk();
    fails_with(
        z.herald(&z.tls_connect(), &root("tls-no-cert"), None)
            .args(["--connect-timeout", "3s", "resolve", "X"]),
        5,
        &["the server requires a client certificate", "--zk-tls-cert"],
    );
}

#[test]
fn a_client_certificate_the_server_does_not_trust_is_rejected() {
    let z = tls_zk();
    fails_with(
        z.herald(&z.tls_connect(), &root("tls-rogue"), Some("rogue"))
            .args(["--connect-timeout", "3s", "resolve", "X"]),
        5,
        &["the server rejected the client certificate", "rogue.pem"],
    );
}

/// Variables to set on a herald command.
type Env<'a> = &'a [(&'a str, &'a Path)];

#[test]
fn bad_tls_files_are_refused_before_connecting() {
    let z = tls_zk();
    let s = Scratch::new("tls-bad-files");
    let text = s.path("notes.txt");
    std::fs::write(&text, "not a certificate\n").unwrap();
    let fifo = s.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A port nothing listens on: each of these must fail before any connection.
    let nowhere = format!("tcp+tls://127.0.0.1:{}", free_port());
    let table: &[(Env, &[&str])] = &[
        (
            &[("HERALD_ZK_TLS_CA", &s.path("missing.pem"))],
            &["--zk-tls-ca", "missing.pem", "No such file"],
        ),
        (
            &[("HERALD_ZK_TLS_CA", &text)],
            &["--zk-tls-ca/HERALD_ZK_TLS_CA", "notes.txt", "no PEM block"],
        ),
        (
            &[("HERALD_ZK_TLS_CA", &fifo)],
            &["--zk-tls-ca", "not a regular file"],
        ),
        (
            &[("HERALD_ZK_TLS_KEY", &fifo)],
            &["--zk-tls-key", "not a regular file"],
        ),
        (
            &[("HERALD_ZK_TLS_CERT", &z.file("client.key"))],
            &[
                "--zk-tls-cert/HERALD_ZK_TLS_CERT",
                "client.key",
                "no PEM block",
            ],
        ),
        (
            &[("HERALD_ZK_TLS_KEY", &z.file("client.pem"))],
            &[
                "--zk-tls-key/HERALD_ZK_TLS_KEY",
                "client.pem",
                "no PEM block",
            ],
        ),
    ];
    for (env, needles) in table {
        let mut command = z.herald(&nowhere, &root("tls-bad-files"), Some("client"));
        for (k, v) in *env {
            command.env(k, v);
        }
        fails_with(command.args(["resolve", "X"]), 2, needles);
    }
    fails_with(
        z.herald(&nowhere, &root("tls-bad-files"), Some("client"))
            .env_remove("HERALD_ZK_TLS_KEY")
            .args(["resolve", "X"]),
        2,
        &["--zk-tls-cert and --zk-tls-key go together"],
    );
    fails_with(
        z.herald(
            &format!("127.0.0.1:{}", z.port),
            &root("tls-bad-files"),
            None,
        )
        .args(["resolve", "X"]),
        2,
        &["no host in --zk/HERALD_ZK", "tcp+tls://"],
    );
    fails_with(
        herald_at(&nowhere, &root("tls-bad-files")).args(["resolve", "X"]),
        2,
        &["need --zk-tls-ca"],
    );
}
