//! herald against hostile users: a second ZooKeeper client without herald's credentials tries to
//! replace a value, inject or remove an instance, and plant or remove an election node, while
//! herald runs with `HERALD_ZK_AUTH`. Every attempt must be refused by ZooKeeper, and the owner
//! must still see its own data.

mod support;

use support::*;
use zookeeper_client as zkc;

const AUTH: &str = "svc:pa55word";

fn owner(root: &str) -> std::process::Command {
    let mut command = herald(root);
    command.env("HERALD_ZK_AUTH", AUTH);
    command
}

/// What a client without herald's identity gets for `op`: it must be refused.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, zkc::Error>) {
    match result {
        Err(zkc::Error::NoAuth) => {}
        other => panic!("{what}: got {other:?}, not NoAuth"),
    }
}

/// A checking client authenticated as `user:password` (digest).
async fn client_as(credentials: &str) -> zkc::Client {
    zkc::Client::connector()
        .with_session_timeout(std::time::Duration::from_secs(10))
        .with_auth("digest", credentials.as_bytes())
        .connect(&zk().connect_string())
        .await
        .expect("connect an authenticated checking client")
}

/// Every attack of the threat model, by `attacker` (called `who`), against the tree under
/// `root` where the director leads PG_HOSTS and instance pg1 is registered.
async fn attempt_every_attack(attacker: &zkc::Client, who: &str, root: &str) {
    let refused = |what: &str, result| refused(&format!("{who}: {what}"), result);
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    let ephemeral = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    let value = format!("{root}/environment/DATABASE_URL");
    // Values: neither replaced nor added.
    refused(
        "delete a value",
        attacker.delete(&value, None).await.map(drop),
    );
    refused(
        "overwrite a value",
        attacker
            .set_data(&value, b"postgresql://evil", None)
            .await
            .map(drop),
    );
    refused(
        "create a value",
        attacker
            .create(&format!("{root}/environment/EVIL"), b"x", &open)
            .await
            .map(drop),
    );
    // Instances: none injected, none removed, no new service, no metadata read.
    let evil = r#"{"name":"pg","id":"evil","address":"6.6.6.6","port":5432,"sslPort":null,"payload":{"labels":{},"meta":{},"endpoints":{},"weight":100},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#;
    refused(
        "inject an instance",
        attacker
            .create(
                &format!("{root}/services/pg/evil"),
                evil.as_bytes(),
                &ephemeral,
            )
            .await
            .map(drop),
    );
    let instance = format!("{root}/services/pg/pg1");
    refused(
        "remove an instance",
        attacker.delete(&instance, None).await.map(drop),
    );
    refused(
        "read an instance's metadata",
        attacker.get_data(&instance).await.map(drop),
    );
    refused(
        "create a service",
        attacker
            .create(&format!("{root}/services/other"), b"", &open)
            .await
            .map(drop),
    );
    // Elections: no node planted ahead of the leader, the leader's not removed.
    let election = format!("{root}/directors/PG_HOSTS");
    refused(
        "plant an election node",
        attacker
            .create(&format!("{election}/a_0"), b"", &ephemeral)
            .await
            .map(drop),
    );
    let nodes = attacker.list_children(&election).await.unwrap();
    assert_eq!(nodes.len(), 1, "one director: {nodes:?}");
    refused(
        "remove the leader's node",
        attacker
            .delete(&format!("{election}/{}", nodes[0]), None)
            .await
            .map(drop),
    );
    refused(
        "create beside herald's directories",
        attacker
            .create(&format!("{root}/slots"), b"", &open)
            .await
            .map(drop),
    );
    // Listing stays open: consumers can see what exists.
    let services = attacker
        .list_children(&format!("{root}/services/pg"))
        .await
        .unwrap();
    assert_eq!(services, ["pg1"], "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_identity_can_list_but_not_replace_inject_or_plant() {
    let root = root("acl_parents");
    let s = Scratch::new("acl_parents");
    let url = "postgresql://app@10.0.0.5/app";
    let put = run(owner(&root).args(["put", "DATABASE_URL", url]));
    assert!(put.status.success(), "{}", describe(&put));
    let director = Daemon::spawn(
        owner(&root)
            .args(["director", "--key", "PG_HOSTS", "--service", "pg"])
            .args(["--preset", "hostports", "--settle", "0s"]),
    );
    let agent = Daemon::spawn(
        owner(&root)
            .args(["announce", "--service", "pg", "--id", "pg1"])
            .args(["--address", "127.0.0.1", "--port", "5432", "--control-dir"])
            .arg(s.path("control")),
    );
    agent.wait_log("registered", 1).await;
    director.wait_log("published old=", 1).await;

    attempt_every_attack(&client().await, "a client without credentials", &root).await;
    attempt_every_attack(
        &client_as("eve:evil").await,
        "a client of another identity",
        &root,
    )
    .await;

    // The owner's data is as it wrote it.
    let resolved = run(owner(&root).args(["resolve", "DATABASE_URL"]));
    assert_eq!(String::from_utf8_lossy(&resolved.stdout), url);
    let hosts = run(owner(&root).args(["resolve", "PG_HOSTS"]));
    assert_eq!(String::from_utf8_lossy(&hosts.stdout), "127.0.0.1:5432");
}

/// The digest id of `credentials`, as `herald acl id` prints it for `--acl`.
fn digest_id(credentials: &str) -> String {
    let out = run(herald("/unused")
        .env("HERALD_ZK_AUTH", credentials)
        .args(["acl", "id"]));
    assert!(out.status.success(), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!id.contains(credentials), "the password stays out: {id}");
    id
}

/// README's deployment with four identities: agents register, the director reads the instances
/// and publishes, the application reads the value. Each does its part with the rights `--acl`
/// grants it, and nothing else: the application cannot read the instances' metadata or write,
/// the agent cannot read or write values, an identity without a grant cannot even read. A grant
/// added later is reported by `herald acl check` and brought in by `herald acl apply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_granted_roles_do_their_part_and_no_more() {
    let root = root("acl_roles");
    let s = Scratch::new("acl_roles");
    let (agent, director, app, eve) = ("agent:a-pw", "director:d-pw", "app:r-pw", "eve:e-pw");
    let grants = format!(
        "register={} lead={} read={}",
        digest_id(agent),
        digest_id(director),
        digest_id(app)
    );
    let as_ = |credentials: &str| {
        let mut command = herald(&root);
        command
            .env("HERALD_ZK_AUTH", credentials)
            .env("HERALD_ZK_ACL", &grants);
        command
    };
    let registered = Daemon::spawn(
        as_(agent)
            .args(["announce", "--service", "pg", "--id", "pg1"])
            .args(["--address", "127.0.0.1", "--port", "5432"])
            .args(["--meta", "password=s3cret", "--control-dir"])
            .arg(s.path("control")),
    );
    registered.wait_log("registered", 1).await;
    let leading = Daemon::spawn(
        as_(director)
            .args(["director", "--key", "PG_HOSTS", "--service", "pg"])
            .args(["--preset", "hostports", "--settle", "0s"]),
    );
    leading.wait_log("published old=", 1).await;
    let resolved = run(as_(app).args(["resolve", "PG_HOSTS"]));
    assert_eq!(
        String::from_utf8_lossy(&resolved.stdout),
        "127.0.0.1:5432",
        "{}",
        describe(&resolved)
    );
    // No more than its part: exit 6, ZooKeeper refused it.
    for (who, args) in [
        (agent, &["resolve", "PG_HOSTS"][..]),
        (agent, &["put", "PG_HOSTS", "6.6.6.6:5432"][..]),
        (app, &["put", "PG_HOSTS", "6.6.6.6:5432"][..]),
        (eve, &["resolve", "PG_HOSTS"][..]),
    ] {
        let out = run(as_(who).args(args));
        assert_eq!(
            out.status.code(),
            Some(6),
            "{who} {args:?}: {}",
            describe(&out)
        );
    }
    let instance = format!("{root}/services/pg/pg1");
    refused(
        "the application reads an instance",
        client_as(app).await.get_data(&instance).await.map(drop),
    );
    let reader = client_as(director).await;
    let (doc, _) = reader.get_data(&instance).await.unwrap();
    assert!(String::from_utf8_lossy(&doc).contains("s3cret"));
    // The id `herald acl id` prints is the one ZooKeeper gives the agent's node (it shows the
    // hash to the node's owner only).
    let (acls, _) = client_as(agent).await.get_acl(&instance).await.unwrap();
    let owner = acls
        .iter()
        .find(|a| a.permission() == zkc::Permission::ALL)
        .map(|a| format!("{}:{}", a.scheme(), a.id()));
    assert_eq!(owner, Some(digest_id(agent)));
    // The agent made the directories, the director the value and its election node: all as
    // the policy says.
    let check = run(as_(director).args(["acl", "check"]));
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));

    // A reader granted later: the value lacks it until apply, by the value's owner.
    let later = format!("{grants} read={}", digest_id(eve));
    let check = run(as_(director)
        .env("HERALD_ZK_ACL", &later)
        .args(["acl", "check"]));
    assert_eq!(check.status.code(), Some(1), "{}", describe(&check));
    let listed = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        listed.contains(&format!(
            "{root}/environment/PG_HOSTS  lacks {}:r",
            digest_id(eve)
        )),
        "{listed}"
    );
    let apply = run(as_(director)
        .env("HERALD_ZK_ACL", &later)
        .args(["acl", "apply"]));
    assert!(apply.status.success(), "{}", describe(&apply));
    let resolved = run(as_(eve).args(["resolve", "PG_HOSTS"]));
    assert_eq!(String::from_utf8_lossy(&resolved.stdout), "127.0.0.1:5432");
}

/// A persistent node planted at an instance's path (predictable: HOSTNAME-PORT) is reported for
/// what it is at once, exit 8, not waited for as if a crashed session held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_node_at_the_instance_path_is_named_at_once() {
    let root = root("acl_squat");
    let s = Scratch::new("acl_squat");
    let squatter = client().await;
    let path = format!("{root}/services/web/web-8080");
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    squatter
        .mkdir(&format!("{root}/services/web"), &open)
        .await
        .unwrap();
    squatter.create(&path, b"{}", &open).await.unwrap();
    let out = run(herald(&root)
        .args(["announce", "--service", "web", "--id", "web-8080"])
        .args(["--address", "127.0.0.1", "--port", "8080", "--control-dir"])
        .arg(s.path("control")));
    assert_eq!(out.status.code(), Some(8), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains("a persistent node, not a registration, occupies") && said.contains(&path),
        "{said}"
    );
    // Not waited for as a crashed predecessor's node (twice the session timeout).
    assert!(!said.contains("waiting for it to go away"), "{said}");
}

/// Without credentials the tree is open; still, nodes planted in an election that are no
/// director's (another name, or a persistent `n_` node that no session ends) take no part in
/// it: the director leads and publishes, and names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_planted_in_an_election_take_no_part_in_it() {
    let root = root("acl_election");
    let planter = client().await;
    let election = format!("{root}/directors/PLANTED");
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    planter.mkdir(&election, &open).await.unwrap();
    for name in ["a_0", "n_0000000000"] {
        planter
            .create(&format!("{election}/{name}"), b"", &open)
            .await
            .unwrap();
    }
    let instance = r#"{"name":"svc","id":"i1","address":"10.0.0.1","port":1001,"sslPort":null,"payload":{"labels":{},"meta":{},"endpoints":{},"weight":1},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#;
    planter
        .mkdir(&format!("{root}/services/svc"), &open)
        .await
        .unwrap();
    planter
        .create(
            &format!("{root}/services/svc/i1"),
            instance.as_bytes(),
            &zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let director = Daemon::spawn(
        herald(&root)
            .args(["director", "--key", "PLANTED", "--service", "svc"])
            .args(["--preset", "hostports", "--settle", "0s"]),
    );
    director.wait_log("published old=", 1).await;
    let value = run(herald(&root).args(["resolve", "PLANTED"]));
    assert_eq!(String::from_utf8_lossy(&value.stdout), "10.0.0.1:1001");
    let said = director.stderr();
    assert!(
        said.contains(&format!("{election}/a_0"))
            && said.contains(&format!("{election}/n_0000000000")),
        "both planted nodes named: {said}"
    );
}

/// A Curator-style instance document.
fn instance_doc(id: &str, address: &str, port: u16, service_type: &str) -> String {
    format!(
        r#"{{"name":"svc","id":"{id}","address":"{address}","port":{port},"sslPort":null,"payload":{{"labels":{{}},"meta":{{}},"endpoints":{{}},"weight":1}},"registrationTimeUTC":1,"serviceType":"{service_type}","uriSpec":null}}"#
    )
}

/// A persistent node in a service that says it is a DYNAMIC registration is nobody's: no
/// session ends it, so it would stay in every value forever. The director leaves it out and
/// names it, both when it lists the service and when the node appears later, and `herald ls`
/// does not show it. A static registration (Curator's `STATIC`) counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_nodes_that_are_no_registration_are_left_out() {
    let root = root("acl_persistent");
    let planter = client().await;
    let service = format!("{root}/services/svc");
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    let ephemeral = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    planter.mkdir(&service, &open).await.unwrap();
    for (id, address, port, mode, kind) in [
        ("planted", "6.6.6.6", 1, &open, "DYNAMIC"),
        ("static", "10.0.0.2", 2, &open, "STATIC"),
        ("live", "10.0.0.1", 1, &ephemeral, "DYNAMIC"),
    ] {
        let doc = instance_doc(id, address, port, kind);
        planter
            .create(&format!("{service}/{id}"), doc.as_bytes(), mode)
            .await
            .unwrap();
    }
    let director = Daemon::spawn(
        herald(&root)
            .args(["director", "--key", "HOSTS", "--service", "svc"])
            .args(["--preset", "hostports", "--settle", "0s"]),
    );
    director.wait_log("published old=", 1).await;
    let value = run(herald(&root).args(["resolve", "HOSTS"]));
    assert_eq!(
        String::from_utf8_lossy(&value.stdout),
        "10.0.0.1:1,10.0.0.2:2"
    );
    let named = |log: &str, id: &str| {
        log.lines()
            .any(|l| l.contains("no registration") && l.contains(&format!("{service}/{id}")))
    };
    assert!(
        named(&director.stderr(), "planted"),
        "{}",
        director.stderr()
    );
    // One planted while it runs, then a real registration: the value takes the second only.
    let doc = instance_doc("later", "6.6.6.7", 1, "DYNAMIC");
    planter
        .create(&format!("{service}/later"), doc.as_bytes(), &open)
        .await
        .unwrap();
    let doc = instance_doc("live2", "10.0.0.3", 3, "DYNAMIC");
    planter
        .create(&format!("{service}/live2"), doc.as_bytes(), &ephemeral)
        .await
        .unwrap();
    director.wait_log("published old=", 2).await;
    let value = run(herald(&root).args(["resolve", "HOSTS"]));
    assert_eq!(
        String::from_utf8_lossy(&value.stdout),
        // By id: live, live2, static.
        "10.0.0.1:1,10.0.0.3:3,10.0.0.2:2"
    );
    assert!(named(&director.stderr(), "later"), "{}", director.stderr());

    let ls = run(herald(&root).args(["ls", "svc"]));
    assert!(ls.status.success(), "{}", describe(&ls));
    let listed = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        listed.contains("10.0.0.1") && listed.contains("10.0.0.2") && !listed.contains("6.6.6."),
        "{listed}"
    );
    let said = String::from_utf8_lossy(&ls.stderr).into_owned();
    assert!(named(&said, "planted") && named(&said, "later"), "{said}");
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// An agent in `control`, started with umask 000 (nothing the umask would have hidden).
fn agent_in(root: &str, control: &std::path::Path, id: &str) -> Daemon {
    use std::os::unix::process::CommandExt;
    let mut command = herald(root);
    command
        .args(["announce", "--service", "svc", "--id", id])
        .args(["--address", "127.0.0.1", "--port", "5432", "--control-dir"])
        .arg(control);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    Daemon::spawn(&mut command)
}

/// The control socket is its user's alone: under umask 000 the directory herald creates is 0700
/// and the socket 0600; and even when an operator opens both up by hand, the agent answers no
/// other user (SO_PEERCRED) and its instance stays registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_its_own_user_only() {
    let root = root("control_perms");
    let s = Scratch::new("control_perms");
    let control = s.path("fresh/control");
    let agent = agent_in(&root, &control, "c1");
    agent.wait_log("registered", 1).await;
    let socket = control.join("svc@c1.sock");
    wait_until("the control socket", || {
        socket
            .exists()
            .then_some(())
            .ok_or_else(|| "absent".to_owned())
    });
    assert_eq!(mode_of(&control), 0o700, "the control directory");
    assert_eq!(mode_of(&socket), 0o600, "the control socket");
    if !is_root() {
        eprintln!("not root: the other-user half of this test needs setpriv as root; skipped");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in [s.path("fresh"), control.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let scratch_top = s.path(".");
    std::fs::set_permissions(&scratch_top, std::fs::Permissions::from_mode(0o711)).unwrap();
    // User nobody asks the agent to drain.
    let out = ask_as_nobody(&socket, "drain\n");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("error: not allowed"),
        "{}",
        describe(&out)
    );
    agent
        .wait_log("refused a control request from another user", 1)
        .await;
    let status = run(herald(&root)
        .args(["status", "--id", "c1", "--control-dir"])
        .arg(&control));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("serving, registered"),
        "still registered: {}",
        describe(&status)
    );
}

/// A control directory deeper than a socket path may be (107 bytes), and an instance id longer
/// than a socket name may be, once left the agent without a socket: `herald drain` could not
/// reach it. The socket is made (the id shortened the same way on both ends) and drain works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_control_path_still_gets_a_socket() {
    let root = root("control_long");
    let s = Scratch::new("control_long");
    let control = s.path(&format!("{}/{}", "d".repeat(60), "e".repeat(60)));
    let id = format!("pod-{}-5432", "x".repeat(100));
    let agent = agent_in(&root, &control, &id);
    agent.wait_log("registered", 1).await;
    let node = format!("{root}/services/svc/{id}");
    let watcher = client().await;
    assert!(watcher.check_stat(&node).await.unwrap().is_some());
    let drained = tokio::task::spawn_blocking({
        let (root, control, id) = (root.clone(), control.clone(), id.clone());
        move || {
            run(herald(&root)
                .args(["drain", "--service", "svc", "--id", &id, "--control-dir"])
                .arg(&control))
        }
    })
    .await
    .unwrap();
    assert!(drained.status.success(), "{}", describe(&drained));
    assert_eq!(watcher.check_stat(&node).await.unwrap(), None, "drained");
    let log = agent.stderr();
    assert!(!log.contains("control socket"), "no socket trouble: {log}");
}

/// A control directory another user owns, or that others may write, is not trusted: the agent
/// makes no socket there (and says why), and `herald drain` refuses to believe what answers in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_directory_others_can_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let root = root("control_dir");
    let s = Scratch::new("control_dir");
    let open = s.path("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let agent = agent_in(&root, &open, "d1");
    agent
        .wait_log("is writable by group or others (mode 777)", 1)
        .await;
    assert!(!open.join("svc@d1.sock").exists());
    // A socket planted there (by whoever could write the directory) is not believed.
    let planted = std::os::unix::net::UnixListener::bind(open.join("svc@d1.sock")).unwrap();
    let out = run(herald(&root)
        .args(["drain", "--id", "d1", "--control-dir"])
        .arg(&open));
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        describe(&out)
    );
    drop(planted);
    if is_root() {
        let theirs = s.path("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let agent = agent_in(&root, &theirs, "d2");
        agent.wait_log("is owned by uid 65534", 1).await;
        assert!(!theirs.join("svc@d2.sock").exists());
    }
}

/// A tree made before the policy (here: by a session without credentials) is reported at a
/// director's start and by `herald acl check`, and `herald acl apply` brings it to the policy:
/// afterwards a client without credentials can no longer replace the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tree_is_reported_and_brought_to_the_policy() {
    let root = root("acl_apply");
    let put = run(herald(&root).args(["put", "DATABASE_URL", "postgresql://old"]));
    assert!(put.status.success(), "{}", describe(&put));
    let director = Daemon::spawn(
        owner(&root)
            .args(["director", "--key", "HOSTS", "--service", "svc"])
            .args(["--preset", "hostports"]),
    );
    director
        .wait_log("more open than herald's ACL policy", 1)
        .await;
    assert!(
        director.stderr().contains(&format!("znode={root} ")),
        "{}",
        director.stderr()
    );
    drop(director);

    let check = run(owner(&root).args(["acl", "check"]));
    assert_eq!(check.status.code(), Some(1), "{}", describe(&check));
    let listed = String::from_utf8_lossy(&check.stdout).into_owned();
    for path in [
        root.clone(),
        format!("{root}/environment"),
        format!("{root}/environment/DATABASE_URL"),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{path}  world:anyone:cdrwa"))),
            "{path} listed: {listed}"
        );
    }
    let apply = run(owner(&root).args(["acl", "apply"]));
    assert!(apply.status.success(), "{}", describe(&apply));
    let check = run(owner(&root).args(["acl", "check"]));
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));

    let attacker = client().await;
    refused(
        "delete the value after apply",
        attacker
            .delete(&format!("{root}/environment/DATABASE_URL"), None)
            .await,
    );
    let resolved = run(owner(&root).args(["resolve", "DATABASE_URL"]));
    assert_eq!(
        String::from_utf8_lossy(&resolved.stdout),
        "postgresql://old"
    );
    // Without credentials there is nothing to bring the tree to: a usage error.
    let bare = run(herald(&root).args(["acl", "check"]));
    assert_eq!(bare.status.code(), Some(2), "{}", describe(&bare));
}

/// What another writer puts in an instance document reaches the terminal escaped: a label
/// with a terminal escape sequence in it is printed as `\u{1b}`, never as the byte. (An address
/// with one is no instance document at all: not listed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_ls_escapes_control_characters() {
    let root = root("ls_escape");
    let writer = client().await;
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    writer
        .mkdir(&format!("{root}/services/svc"), &open)
        .await
        .unwrap();
    let doc = r#"{"name":"svc","id":"i1","address":"10.0.0.1","port":1,"sslPort":null,"payload":{"labels":{"note":"x\u001b[2J","zone":"a\nb"},"meta":{},"endpoints":{},"weight":1},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#;
    let bad_address = doc.replace(r#""10.0.0.1""#, r#""10.0.0.2\u001b[2J""#);
    for (id, doc) in [("i1", doc), ("i2", bad_address.as_str())] {
        writer
            .create(
                &format!("{root}/services/svc/{id}"),
                doc.as_bytes(),
                &zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all()),
            )
            .await
            .unwrap();
    }
    let out = run(herald(&root).args(["ls", "svc"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!out.stdout.contains(&0x1b), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(r"note=x\u{1b}[2J"), "{text}");
    assert!(text.contains(r"zone=a\nb"), "{text}");
    assert!(!text.contains("10.0.0.2"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

/// Credentials never travel in a connect string (ps and logs show it): `user:pw@host` is a usage
/// error that does not repeat them; and a credentials file others can read is warned about.
#[test]
fn credentials_stay_out_of_connect_strings_and_readable_files() {
    let root = root("zk_creds");
    let out = run(herald(&root)
        .env("HERALD_ZK", "admin:s3cret@127.0.0.1:2181")
        .args(["ls"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !said.contains("s3cret") && said.contains("HERALD_ZK_AUTH"),
        "{said}"
    );

    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("zk_creds");
    let file = s.path("zk-auth");
    std::fs::write(&file, format!("{AUTH}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(herald(&root).arg("--zk-auth-file").arg(&file).args(["ls"]));
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains("can be read by group or others") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(!said.contains("pa55word"), "{said}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(herald(&root).arg("--zk-auth-file").arg(&file).args(["ls"]));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("group or others"),
        "{}",
        describe(&out)
    );
}

/// `watch --out` where other local users can reach: whatever they could put at the path (a
/// FIFO, a link to a device, a link of theirs to another user's file, a file made beforehand
/// to keep the secret, a directory they may write) is refused at once, exit 2, naming the path,
/// and nothing is read from it or written through it. `--mode` refuses set-id, sticky and
/// world-writable bits.
#[test]
fn watch_out_refuses_what_another_local_user_could_plant() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = root("out_hostile");
    let s = Scratch::new("out_hostile");
    let put = run(herald(&root).args(["put", "CONF", "secret-v1"]));
    assert!(put.status.success(), "{}", describe(&put));
    let watch = |out: &std::path::Path, extra: &[&str]| {
        run(herald(&root)
            .args(["watch", "CONF", "--once"])
            .args(extra)
            .arg("--out")
            .arg(out))
    };
    let refused = |out: &std::path::Path, says: &str| {
        let o = watch(out, &[]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: {}",
            out.display(),
            describe(&o)
        );
        let said = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(said.contains(says) && said.lines().count() == 1, "{said}");
        assert!(!said.contains("secret"), "{said}");
    };
    let staged_left = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".herald-"))
            .count()
    };

    // A FIFO would block the read that compares; a link to /dev/zero would read without end.
    let fifo = s.path("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    refused(&fifo, &format!("--out {} is a FIFO", fifo.display()));
    let zero = s.path("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    refused(&zero, "--out /dev/zero is a device");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &std::fs::metadata("/dev/zero").unwrap().file_type()
    ));

    for mode in ["4755", "1644", "666"] {
        let o = watch(&s.path("app.conf"), &["--mode", mode]);
        assert_eq!(o.status.code(), Some(2), "--mode {mode}: {}", describe(&o));
    }
    assert!(!s.path("app.conf").exists());

    if !is_root() {
        eprintln!("not root: links and files of another user are not tried");
        return;
    }
    const NOBODY: u32 = 65534;
    // Another user's link to a file only root may read and write.
    let root_only = s.path("root-only");
    std::fs::write(&root_only, "keep").unwrap();
    std::fs::set_permissions(&root_only, PermissionsExt::from_mode(0o600)).unwrap();
    let link = s.path("link");
    std::os::unix::fs::symlink(&root_only, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    refused(&link, "is a symbolic link owned by uid 65534");
    assert_eq!(std::fs::read_to_string(&root_only).unwrap(), "keep");
    // A file another user made beforehand, open to all, to receive the value.
    let trap = s.path("trap.conf");
    std::fs::write(&trap, "").unwrap();
    std::fs::set_permissions(&trap, PermissionsExt::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&trap, Some(NOBODY), Some(NOBODY)).unwrap();
    refused(&trap, "is owned by uid 65534");
    assert_eq!(std::fs::read_to_string(&trap).unwrap(), "");
    // A directory another user may write (like /tmp): refused unless asked for.
    let shared = s.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o1777)).unwrap();
    let out = shared.join("app.conf");
    refused(&out, "can be written by group or others");
    assert!(!out.exists());
    let o = watch(&out, &["--allow-shared-dir"]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "secret-v1");
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o600, 0));
    assert_eq!(staged_left(&shared) + staged_left(s.path("").as_path()), 0);
}

/// A FIFO or a device where a flag expects a file once hung herald (SIGTERM unserved) or ate
/// memory: each is refused at once, exit 2, one line naming the flag and what it is.
#[test]
fn files_that_flags_name_must_be_regular_files() {
    let root = root("flag_files");
    let s = Scratch::new("flag_files");
    let fifo = s.path("fifo");
    let made = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; plain syscall.
    assert_eq!(unsafe { libc::mkfifo(made.as_ptr(), 0o600) }, 0);
    let out = s.path("out");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("--config", vec!["director", "--check-config", "--config"]),
        ("--zk-auth-file", vec!["resolve", "K", "--zk-auth-file"]),
        (
            "--meta-file",
            vec!["announce", "--service", "s", "--port", "1", "--meta-file"],
        ),
        (
            "--token-file",
            vec!["gateway", "--listen", "127.0.0.1:0", "--token-file"],
        ),
        (
            "--template",
            vec![
                "watch",
                "K",
                "--once",
                "--out",
                out.to_str().unwrap(),
                "--template",
            ],
        ),
    ];
    for (flag, args) in &cases {
        for (file, kind) in [
            (fifo.as_path(), "a FIFO"),
            (std::path::Path::new("/dev/zero"), "a device"),
        ] {
            let o = run(herald(&root).args(args).arg(file));
            let said = String::from_utf8_lossy(&o.stderr).into_owned();
            assert_eq!(o.status.code(), Some(2), "{flag} {kind}: {}", describe(&o));
            assert!(
                said.contains(flag) && said.contains(kind) && said.lines().count() == 1,
                "{flag} {kind}: {said}"
            );
        }
    }
}
