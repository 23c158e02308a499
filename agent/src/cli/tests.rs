//! The node commands against the fake CRI runtime: listings in each format, ID prefixes and
//! names, inspect, ExecSync exit codes, and the errors people see.

use std::time::Duration;

use mk_fake_runtime::{ExecResult, FakeRuntime, ServerHandle};
use serde_json::Value;

use super::output::Format;
use super::*;
use crate::test_cri::{run_sandbox, sandbox_config, sleeping_container, start_container};

const IMAGE: &str = "docker.io/library/busybox:1.36";

struct Node {
    _dir: tempfile::TempDir,
    fake: FakeRuntime,
    _server: ServerHandle,
    cri: Cri,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeRuntime::new();
    fake.add_image_with_size(IMAGE, 1_234_567);
    let server = fake
        .serve_unix(dir.path().join("cri.sock"))
        .expect("fake CRI");
    let target = Target {
        endpoint: Some(server.endpoint()),
        ..Target::default()
    };
    let cri = Cri::connect(&endpoint(&target).expect("endpoint")).expect("client");
    Node {
        _dir: dir,
        fake,
        _server: server,
        cri,
    }
}

/// Two pods: `web` with containers `main` (running) and `init` (exited), `db` with `main`.
async fn two_pods(node: &Node) -> (String, String, String, String, String) {
    let client = node.cri.client();
    let web = sandbox_config("web");
    let web_id = run_sandbox(client, &web).await;
    let web_main =
        start_container(client, &web_id, &web, sleeping_container("main", 0, IMAGE)).await;
    let init = start_container(client, &web_id, &web, sleeping_container("init", 0, IMAGE)).await;
    node.fake.exit_container(&init, 0, None).expect("exit");
    let db = sandbox_config("db");
    let db_id = run_sandbox(client, &db).await;
    let db_main = start_container(client, &db_id, &db, sleeping_container("main", 0, IMAGE)).await;
    (web_id, db_id, web_main, init, db_main)
}

fn ps_args(all: bool, output: Format) -> ps::Args {
    ps::Args {
        all,
        labels: Vec::new(),
        name: None,
        pod: None,
        quiet: false,
        output,
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON output")
}

#[tokio::test]
async fn pods_table_and_json() {
    let node = node().await;
    let (web_id, db_id, ..) = two_pods(&node).await;
    let args = pods::Args {
        labels: Vec::new(),
        name: None,
        namespace: None,
        ready: false,
        quiet: false,
        output: Format::Table,
    };
    let table = pods::run(&node.cri, &args).await.expect("pods");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "POD",
            "ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    // Newest first; short IDs; Ready; the default handler.
    assert!(lines[1].starts_with(&output::short_id(&db_id)), "{table}");
    assert!(lines[2].starts_with(&output::short_id(&web_id)), "{table}");
    for (line, name) in [(lines[1], "db"), (lines[2], "web")] {
        let cells: Vec<&str> = line
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells[2..],
            ["Ready", name, "default", "0", "(default)"],
            "{line}"
        );
    }

    let doc = json(
        &pods::run(
            &node.cri,
            &pods::Args {
                output: Format::Json,
                ..args.clone()
            },
        )
        .await
        .expect("pods"),
    );
    let items = doc["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    let web = items
        .iter()
        .find(|i| i["id"] == web_id.as_str())
        .expect("web");
    assert_eq!(web["state"], "SANDBOX_READY");
    assert_eq!(web["metadata"]["name"], "web");
    assert_eq!(web["metadata"]["uid"], "uid-web");
    assert!(web["createdAt"].as_i64().is_some_and(|t| t > 0), "{web}");

    let yaml = pods::run(
        &node.cri,
        &pods::Args {
            output: Format::Yaml,
            name: Some("we".into()),
            ..args.clone()
        },
    )
    .await
    .expect("pods");
    assert!(yaml.contains("state: SANDBOX_READY"), "{yaml}");
    assert!(!yaml.contains(&db_id), "{yaml}");

    let quiet = pods::run(
        &node.cri,
        &pods::Args {
            quiet: true,
            ..args
        },
    )
    .await
    .expect("pods");
    assert_eq!(quiet, format!("{db_id}\n{web_id}\n"));
}

#[tokio::test]
async fn ps_shows_running_and_with_all_exited_containers() {
    let node = node().await;
    let (web_id, _, web_main, init, db_main) = two_pods(&node).await;
    let running = ps::run(&node.cri, &ps_args(false, Format::Table))
        .await
        .expect("ps");
    assert_eq!(running.lines().count(), 3, "{running}");
    assert!(!running.contains(&output::short_id(&init)), "{running}");
    let all = ps::run(&node.cri, &ps_args(true, Format::Table))
        .await
        .expect("ps -a");
    assert_eq!(all.lines().count(), 4, "{all}");
    let init_line = all
        .lines()
        .find(|l| l.starts_with(&output::short_id(&init)))
        .expect("the exited container");
    assert!(init_line.contains("Exited"), "{init_line}");
    assert!(init_line.contains(IMAGE), "{init_line}");
    assert!(
        init_line.contains(&output::short_id(&web_id)),
        "{init_line}"
    );

    let doc = json(
        &ps::run(&node.cri, &ps_args(true, Format::Json))
            .await
            .expect("ps"),
    );
    let containers = doc["containers"].as_array().expect("containers");
    let states: Vec<(&str, &str)> = containers
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for (id, state) in [
        (&web_main, "CONTAINER_RUNNING"),
        (&init, "CONTAINER_EXITED"),
        (&db_main, "CONTAINER_RUNNING"),
    ] {
        assert!(states.contains(&(id.as_str(), state)), "{states:?}");
    }
    assert!(
        containers.iter().all(|c| c["podSandboxId"].is_string()),
        "{doc}"
    );

    // --pod takes a sandbox ID prefix.
    let args = ps::Args {
        pod: Some(web_id[..6].to_string()),
        quiet: true,
        ..ps_args(true, Format::Table)
    };
    let mut ids: Vec<String> = ps::run(&node.cri, &args)
        .await
        .expect("ps")
        .lines()
        .map(String::from)
        .collect();
    ids.sort();
    let mut want = vec![web_main, init];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn containers_resolve_by_prefix_and_name() {
    let node = node().await;
    let (web_id, _, web_main, init, _) = two_pods(&node).await;
    let containers = resolve::all_containers(&node.cri).await.expect("list");
    assert_eq!(
        resolve::container(&containers, &web_main[..8])
            .expect("prefix")
            .id,
        web_main
    );
    assert_eq!(
        resolve::container(&containers, "init").expect("name").id,
        init
    );
    // `main` runs in both pods.
    assert!(matches!(
        resolve::container(&containers, "main"),
        Err(CliError::Ambiguous { .. })
    ));
    let sandboxes = resolve::all_sandboxes(&node.cri).await.expect("list");
    assert_eq!(
        resolve::sandbox(&sandboxes, "web").expect("pod name").id,
        web_id
    );
    let image = resolve::image(&node.cri, IMAGE)
        .await
        .expect("image by reference");
    assert_eq!(image.size, 1_234_567);
    let by_id = resolve::image(&node.cri, &output::short_id(&image.id))
        .await
        .expect("by ID prefix");
    assert_eq!(by_id.id, image.id);
}

#[tokio::test]
async fn inspect_finds_containers_sandboxes_and_images() {
    let node = node().await;
    let (web_id, _, _, init, _) = two_pods(&node).await;
    let inspect = |id: &str, output| inspect::Args {
        id: id.into(),
        output,
    };
    let doc = json(
        &inspect::run(&node.cri, &inspect(&init[..10], Format::Json))
            .await
            .expect("container"),
    );
    assert_eq!(doc["status"]["id"], init.as_str());
    assert_eq!(doc["status"]["state"], "CONTAINER_EXITED");
    assert_eq!(doc["status"]["metadata"]["name"], "init");
    let doc = json(
        &inspect::run(&node.cri, &inspect(&web_id, Format::Json))
            .await
            .expect("sandbox"),
    );
    assert_eq!(doc["status"]["state"], "SANDBOX_READY");
    assert_eq!(doc["status"]["metadata"]["namespace"], "default");
    let doc = json(
        &inspect::run(&node.cri, &inspect(IMAGE, Format::Json))
            .await
            .expect("image"),
    );
    assert_eq!(doc["status"]["repoTags"][0], IMAGE);
    let table = inspect::run(&node.cri, &inspect("init", Format::Table))
        .await
        .expect("table");
    assert!(table.contains("CONTAINER_EXITED"), "{table}");
    let err = inspect::run(&node.cri, &inspect("nothing-is-called-this", Format::Json))
        .await
        .expect_err("unknown");
    assert!(matches!(err, CliError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn exec_sync_exit_code_is_the_result() {
    let node = node().await;
    let (.., web_main, _, _) = two_pods(&node).await;
    node.fake.set_exec_result(ExecResult {
        exit_code: 3,
        stdout: b"out\n".to_vec(),
        stderr: Vec::new(),
        delay: Duration::ZERO,
    });
    let args = exec::Args {
        interactive: false,
        tty: false,
        timeout: 0,
        container: web_main[..8].to_string(),
        command: vec!["sh".into(), "-c".into(), "exit 3".into()],
    };
    assert_eq!(exec::run(&node.cri, &args).await.expect("exec"), 3);
}

#[tokio::test]
async fn images_and_version() {
    let node = node().await;
    let args = images::Args {
        image: None,
        quiet: false,
        output: Format::Table,
    };
    let table = images::run(&node.cri, &args).await.expect("images");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "docker.io/library/busybox");
    assert_eq!(row[1], "1.36");
    assert_eq!(row[3], "1.23MB");
    let doc = json(
        &images::run(
            &node.cri,
            &images::Args {
                output: Format::Json,
                ..args
            },
        )
        .await
        .expect("images"),
    );
    assert_eq!(doc["images"][0]["repoTags"][0], IMAGE);
    assert_eq!(doc["images"][0]["size"], 1_234_567);

    let doc = json(
        &version::run(
            &node.cri,
            &version::Args {
                output: Format::Json,
            },
        )
        .await
        .expect("version"),
    );
    assert_eq!(doc["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(
        doc["runtimeName"].as_str().is_some_and(|n| !n.is_empty()),
        "{doc}"
    );
    assert_eq!(doc["runtimeApiVersion"], "v1");
}

#[tokio::test]
async fn a_dead_socket_is_one_line_naming_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("unix://{}", dir.path().join("gone.sock").display());
    let target = Target {
        endpoint: Some(endpoint.clone()),
        ..Target::default()
    };
    let command = NodeCommand::Pods(pods::Args {
        labels: Vec::new(),
        name: None,
        namespace: None,
        ready: false,
        quiet: false,
        output: Format::Table,
    });
    let err = run(&command, &target).await.expect_err("no runtime");
    let text = err.to_string();
    assert!(text.contains(&endpoint), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn endpoints_follow_the_agents_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         containerRuntimeEndpoint: unix:///run/crio/crio.sock\n",
    )
    .expect("config");
    let root = dir.path().join("root");
    let at = |endpoint: Option<&str>, config: Option<&std::path::Path>, docker: bool| {
        super::endpoint(&Target {
            endpoint: endpoint.map(String::from),
            config: config.map(std::path::Path::to_path_buf),
            docker,
            root_dir: root.clone(),
        })
        .expect("endpoint")
    };
    assert_eq!(at(None, None, false), DEFAULT_ENDPOINT);
    assert_eq!(at(None, Some(&config), false), "unix:///run/crio/crio.sock");
    assert_eq!(
        at(Some("unix:///a.sock"), Some(&config), false),
        "unix:///a.sock"
    );
    assert_eq!(
        at(Some("unix:///a.sock"), Some(&config), true),
        format!("unix://{}/dockershim.sock", root.display())
    );
    assert!(matches!(
        super::endpoint(&Target {
            endpoint: Some("tcp://1.2.3.4:5".into()),
            ..Target::default()
        }),
        Err(CliError::Endpoint(_))
    ));
}
