//! `mini-kubelet inspect ID`: the verbose CRI status of a container, pod sandbox or image (as
//! crictl's `inspect`, `inspectp` and `inspecti` in one verb).

use mk_cri::api;
use serde_json::Value;

use super::output::{self, Format};
use super::{CliError, Cri, resolve};

pub const EXAMPLES: &str =
    "IDs may be unique prefixes; container and pod names work where they name one thing.
Containers are looked up first, then pod sandboxes, then images.

Examples:
  mini-kubelet inspect 3f2a9c               # a container, sandbox or image ID prefix
  mini-kubelet inspect main -o yaml         # the container named main
  mini-kubelet inspect busybox:1.36         # an image
  mini-kubelet inspect 3f2a9c -o table      # a short summary";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Container, pod sandbox or image: ID, unique ID prefix, or name.
    pub id: String,
    /// Output format (default JSON, as crictl).
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: Format,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let containers = resolve::all_containers(cri).await?;
    let sandboxes = resolve::all_sandboxes(cri).await?;
    let (kind, value) = match resolve::container(&containers, &args.id) {
        Ok(container) => ("container", container_doc(cri, &container.id).await?),
        Err(CliError::NotFound { .. }) => match resolve::sandbox(&sandboxes, &args.id) {
            Ok(sandbox) => ("pod sandbox", sandbox_doc(cri, &sandbox.id).await?),
            Err(CliError::NotFound { .. }) => match resolve::image(cri, &args.id).await {
                Ok(image) => ("image", image_doc(cri, &image.id).await?),
                Err(CliError::NotFound { .. }) => {
                    return Err(CliError::NotFound {
                        kind: "container, pod sandbox or image",
                        query: args.id.clone(),
                    });
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    match args.output {
        Format::Table => Ok(summary(kind, &value)),
        format => output::document(format, value),
    }
}

/// `info` as the runtime sent it: JSON documents parsed, anything else kept as text.
fn info(map: std::collections::HashMap<String, String>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| {
                let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
                (k, parsed)
            })
            .collect(),
    )
}

async fn container_doc(cri: &Cri, id: &str) -> Result<Value, CliError> {
    let answer = cri
        .client()
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .map_err(cri.err())?;
    let mut status = output::crictl_names(&answer.status)?;
    output::enum_name(&mut status, "state", super::ps::state_name);
    Ok(serde_json::json!({ "status": status, "info": info(answer.info) }))
}

async fn sandbox_doc(cri: &Cri, id: &str) -> Result<Value, CliError> {
    let answer = cri
        .client()
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .map_err(cri.err())?;
    let mut status = output::crictl_names(&answer.status)?;
    output::enum_name(&mut status, "state", super::pods::state_name);
    Ok(serde_json::json!({ "status": status, "info": info(answer.info) }))
}

async fn image_doc(cri: &Cri, id: &str) -> Result<Value, CliError> {
    let answer = cri
        .client()
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: id.into(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .map_err(cri.err())?;
    let status = output::crictl_names(&answer.image)?;
    Ok(serde_json::json!({ "status": status, "info": info(answer.info) }))
}

/// `-o table`: a few lines of what people look for first.
fn summary(kind: &str, doc: &Value) -> String {
    let status = &doc["status"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut lines = vec![
        ("KIND", kind.to_string()),
        ("ID", text(&status["id"])),
        ("NAME", text(&status["metadata"]["name"])),
    ];
    match kind {
        "container" => {
            lines.push(("STATE", text(&status["state"])));
            lines.push(("IMAGE", text(&status["image"]["image"])));
            lines.push(("EXIT CODE", text(&status["exitCode"])));
            lines.push(("LOG PATH", text(&status["logPath"])));
        }
        "pod sandbox" => {
            lines.push(("STATE", text(&status["state"])));
            lines.push(("NAMESPACE", text(&status["metadata"]["namespace"])));
            lines.push(("IP", text(&status["network"]["ip"])));
        }
        _ => {
            lines[2].1 = text(&status["repoTags"]);
            lines.push((
                "SIZE",
                status["size"]
                    .as_u64()
                    .map(output::human_size)
                    .unwrap_or_default(),
            ));
        }
    }
    output::table(
        &["FIELD", "VALUE"],
        lines.into_iter().map(|(k, v)| vec![k.into(), v]).collect(),
    )
}
