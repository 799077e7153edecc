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

/// What an identity-less client gets for `op`: it must be refused.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, zkc::Error>) {
    match result {
        Err(zkc::Error::NoAuth) => {}
        other => panic!("{what}: a client without credentials got {other:?}, not NoAuth"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_credentials_can_read_but_not_replace_inject_or_plant() {
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

    let attacker = client().await;
    let open = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    let ephemeral = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    let value = format!("{root}/environment/DATABASE_URL");
    // Values: neither replaced nor added.
    refused("delete a value", attacker.delete(&value, None).await);
    refused(
        "create a value",
        attacker
            .create(&format!("{root}/environment/EVIL"), b"x", &open)
            .await,
    );
    // Instances: none injected, none removed, no new service.
    let evil = r#"{"name":"pg","id":"evil","address":"6.6.6.6","port":5432,"sslPort":null,"payload":{"labels":{},"meta":{},"endpoints":{},"weight":100},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#;
    refused(
        "inject an instance",
        attacker
            .create(
                &format!("{root}/services/pg/evil"),
                evil.as_bytes(),
                &ephemeral,
            )
            .await,
    );
    refused(
        "remove an instance",
        attacker
            .delete(&format!("{root}/services/pg/pg1"), None)
            .await,
    );
    refused(
        "create a service",
        attacker
            .create(&format!("{root}/services/other"), b"", &open)
            .await,
    );
    // Elections: no node planted ahead of the leader, the leader's not removed.
    let election = format!("{root}/directors/PG_HOSTS");
    refused(
        "plant an election node",
        attacker
            .create(&format!("{election}/a_0"), b"", &ephemeral)
            .await,
    );
    let nodes = attacker.list_children(&election).await.unwrap();
    assert_eq!(nodes.len(), 1, "one director: {nodes:?}");
    refused(
        "remove the leader's node",
        attacker
            .delete(&format!("{election}/{}", nodes[0]), None)
            .await,
    );
    refused(
        "create beside herald's directories",
        attacker.create(&format!("{root}/slots"), b"", &open).await,
    );
    // Listing stays open: consumers without credentials can see what exists.
    let services = attacker
        .list_children(&format!("{root}/services/pg"))
        .await
        .unwrap();
    assert_eq!(services, ["pg1"]);

    // The owner's data is as it wrote it.
    let resolved = run(owner(&root).args(["resolve", "DATABASE_URL"]));
    assert_eq!(String::from_utf8_lossy(&resolved.stdout), url);
    let hosts = run(owner(&root).args(["resolve", "PG_HOSTS"]));
    assert_eq!(String::from_utf8_lossy(&hosts.stdout), "127.0.0.1:5432");
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
