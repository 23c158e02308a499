//! Image garbage collection end to end (kubelet's imageGCManager), on a containerd of the
//! test's own: GC removes every unused image, and the suite's shared containerd holds the images
//! of the other tests. The test imports one extra image no container uses, runs a static pod of
//! busybox with GC off, then restarts the agent with `imageGCHighThresholdPercent: 1`,
//! `imageGCLowThresholdPercent: 0`, `imageMinimumGCAge: 0s` (any disk is over 1%): the round at
//! agent start removes the extra image and keeps busybox (the running pod's) and the pause image
//! (containerd's sandbox image, which no container uses).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mk_cri::{CriClient, CriMetrics, api};
use mk_e2e::periods::{allow, work};
use mk_e2e::{Agent, BUSYBOX, PAUSE, busybox_pod, periods};

/// The image no container uses (built by [`build_extra_image`]).
const EXTRA: &str = "mini-kubelet.local/gc-extra:1";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Where the pause and busybox archives are (as `containerd-up.sh` looks for them).
fn image_dir() -> PathBuf {
    std::env::var("MK_E2E_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-images"))
}

/// A private containerd under a temporary directory, stopped with `containerd-down.sh` when
/// dropped (also when an assertion failed).
struct PrivateContainerd {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl PrivateContainerd {
    fn start() -> Result<Self> {
        // Short: the socket path must fit a unix socket address.
        let dir = tempfile::Builder::new()
            .prefix("mk-gc-")
            .tempdir_in("/tmp")?;
        let output = Command::new(scripts().join("containerd-up.sh"))
            .arg(dir.path())
            .arg(image_dir())
            .stderr(Stdio::inherit())
            .output()
            .context("running containerd-up.sh")?;
        // From here on the guard stops it, whatever happens.
        let mut guard = Self {
            dir,
            endpoint: String::new(),
        };
        ensure!(
            output.status.success(),
            "containerd-up.sh failed: {}",
            output.status
        );
        guard.endpoint = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        ensure!(
            guard.endpoint.starts_with("unix://"),
            "containerd-up.sh printed no endpoint: {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
        Ok(guard)
    }

    fn socket(&self) -> &str {
        self.endpoint.trim_start_matches("unix://")
    }

    fn cri(&self) -> Result<CriClient> {
        Ok(CriClient::new(
            &self.endpoint,
            Duration::from_secs(60),
            CriMetrics::default(),
        )?)
    }

    /// `ctr -a SOCK -n k8s.io images import ARCHIVE`.
    fn import(&self, archive: &Path) -> Result<()> {
        let status = Command::new("ctr")
            .args(["-a", self.socket(), "-n", "k8s.io", "images", "import"])
            .arg(archive)
            .stdout(Stdio::null())
            .status()
            .context("running ctr")?;
        ensure!(status.success(), "ctr images import failed: {status}");
        Ok(())
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if std::env::var("MK_E2E_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let _ = Command::new(scripts().join("containerd-down.sh"))
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

/// Writes a one-layer OCI image archive named [`EXTRA`] (a single text file: an image ID of its
/// own, unlike a second tag of busybox) that `ctr images import` accepts.
fn build_extra_image(path: &Path) -> Result<()> {
    const SCRIPT: &str = r#"
import hashlib, io, json, platform, sys, tarfile
out, ref = sys.argv[1], sys.argv[2]
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
layer = tar([("gc-extra.txt", b"an image for the image garbage collection test\n")])
config = json.dumps({"architecture": arch, "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}, sort_keys=True).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer), "size": len(layer)}]},
    sort_keys=True).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": sha(manifest), "size": len(manifest), "platform": {"architecture": arch, "os": "linux"},
    "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}]},
    sort_keys=True).encode()
blob = lambda b: ("blobs/sha256/" + hashlib.sha256(b).hexdigest(), b)
with open(out, "wb") as f:
    f.write(tar([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                 blob(config), blob(manifest), blob(layer)]))
"#;
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .arg(EXTRA)
        .status()
        .context("running python3 (e2e/scripts/install-deps.sh installs it)")?;
    ensure!(
        status.success(),
        "building the extra image failed: {status}"
    );
    Ok(())
}

/// The image ID `reference` has in the runtime, if present.
async fn image_id(cri: &CriClient, reference: &str) -> Result<Option<String>> {
    let status = cri
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?;
    Ok(status.image.map(|i| i.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_are_collected_used_and_pause_images_kept() -> Result<()> {
    let containerd = PrivateContainerd::start()?;
    let cri = containerd.cri()?;
    let archive = containerd.dir.path().join("gc-extra.tar");
    build_extra_image(&archive)?;
    containerd.import(&archive)?;
    let extra = image_id(&cri, EXTRA)
        .await?
        .context("the extra image was imported")?;
    let busybox = image_id(&cri, BUSYBOX).await?.context("busybox imported")?;
    let pause = image_id(&cri, PAUSE).await?.context("pause imported")?;
    ensure!(
        extra != busybox && extra != pause,
        "the extra image has an ID of its own"
    );

    // A running static pod of busybox, with image GC off (a high threshold of 100).
    let mut agent = Agent::start_on(
        "imagegc",
        &containerd.endpoint,
        "imageGCHighThresholdPercent: 100\n",
    )?;
    agent.write_manifest(
        "keeper.yaml",
        &busybox_pod(
            "keeper",
            "Always",
            1,
            "trap \"exit 0\" TERM; while true; do sleep 1; done",
        ),
    )?;
    let deadline = Instant::now() + periods().static_pod_start();
    let running = loop {
        let running: Vec<api::Container> = agent
            .containers()
            .await?
            .into_iter()
            .filter(|c| c.state == i32::from(api::ContainerState::ContainerRunning))
            .collect();
        if !running.is_empty() {
            break running;
        }
        agent.assert_alive();
        if Instant::now() > deadline {
            bail!("the static pod never ran; agent log:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        image_id(&cri, EXTRA).await?.is_some(),
        "GC is off: nothing removed"
    );

    // The agent again, with GC at 1% / 0% and no minimum age: the round at its start collects.
    agent.kill();
    let config = agent.dir.path().join("kubelet.yaml");
    let text = std::fs::read_to_string(&config)?.replace(
        "imageGCHighThresholdPercent: 100\n",
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n",
    );
    std::fs::write(&config, text)?;
    let started = Instant::now();
    agent.spawn()?;
    // The agent starts, then one round: ListImages, ListContainers, Status, RemoveImage,
    // ImageFsInfo (statvfs is no CRI call but costs less than one).
    let deadline = started + allow(work::AGENT_START) + allow(work::CRI_CALL) * 6;
    loop {
        if image_id(&cri, EXTRA).await?.is_none() {
            break;
        }
        agent.assert_alive();
        if Instant::now() > deadline {
            bail!(
                "{EXTRA} ({extra}) was not collected within {:?} of the agent's start; agent log:\n{}",
                deadline - started,
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = agent.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("Removing image to free bytes") && l.contains(&extra)),
        "no removal line for {extra} in the agent log:\n{log}"
    );
    ensure!(
        image_id(&cri, BUSYBOX).await? == Some(busybox.clone()),
        "busybox, which the running pod uses, was removed; agent log:\n{log}"
    );
    ensure!(
        image_id(&cri, PAUSE).await? == Some(pause.clone()),
        "the pause (sandbox) image was removed; agent log:\n{log}"
    );
    ensure!(
        !log.lines()
            .any(|l| l.contains("Removing image to free bytes")
                && (l.contains(&busybox) || l.contains(&pause))),
        "a kept image was tried; agent log:\n{log}"
    );
    // The pod's container runs on.
    let still = agent.containers().await?;
    ensure!(
        still.iter().any(|c| c.id == running[0].id
            && c.state == i32::from(api::ContainerState::ContainerRunning)),
        "the pod's container stopped: {still:?}"
    );
    drop(agent);
    drop(containerd);
    Ok(())
}
