//! `mini-kubelet ps`: the runtime's containers.

use std::collections::HashMap;

use mk_cri::api;

use super::output::{self, Format};
use super::{CliError, Cri};

pub const EXAMPLES: &str = "Examples:
  mini-kubelet ps                 # running containers
  mini-kubelet ps -a              # and exited ones
  mini-kubelet ps --pod 3f2a --name main -o yaml
  mini-kubelet ps -q --label io.kubernetes.pod.namespace=kube-system";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Show all containers (exited and created ones too); default: running only.
    #[arg(short, long)]
    pub all: bool,
    /// Only containers with this label (key=value); may be repeated.
    #[arg(short, long = "label", value_parser = super::pods::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only containers whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Only containers of this pod sandbox (ID or unique ID prefix).
    #[arg(short, long)]
    pub pod: Option<String>,
    /// Print only the container IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub fn state_name(state: i32) -> Option<&'static str> {
    api::ContainerState::try_from(state)
        .ok()
        .map(|s| s.as_str_name())
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let pod_sandbox_id = match &args.pod {
        Some(query) => {
            let sandboxes = super::resolve::all_sandboxes(cri).await?;
            super::resolve::sandbox(&sandboxes, query)?.id.clone()
        }
        None => String::new(),
    };
    let filter = api::ContainerFilter {
        pod_sandbox_id,
        label_selector: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        state: (!args.all).then_some(api::ContainerStateValue {
            state: api::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let mut containers = cri
        .client()
        .list_containers(api::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(cri.err())?
        .containers;
    containers.retain(|c| {
        args.name.as_ref().is_none_or(|n| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(n.as_str()))
        })
    });
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    // Kubelet creates containers from image IDs: the table names them by a tag of the image.
    let tags = if args.output == Format::Table && !args.quiet {
        cri.client()
            .list_images(api::ListImagesRequest { filter: None })
            .await
            .map_err(cri.err())?
            .images
            .into_iter()
            .filter_map(|i| Some((i.id, i.repo_tags.into_iter().next()?)))
            .collect()
    } else {
        HashMap::new()
    };
    render(
        &containers,
        &tags,
        args.quiet,
        args.output,
        jiff::Timestamp::now(),
    )
}

/// What the IMAGE column shows: the image as the pod spec named it where the runtime reports
/// that, else the reference the container was created from; an image ID is shown as a tag of
/// that image (`tags`: image ID → first tag), or as the short ID.
fn image_column(c: &api::Container, tags: &HashMap<String, String>) -> String {
    let spec = c.image.as_ref();
    if let Some(named) = spec
        .map(|i| i.user_specified_image.as_str())
        .filter(|i| !i.is_empty())
    {
        return named.to_string();
    }
    let image = spec.map_or("", |i| i.image.as_str());
    let id = if image.is_empty() {
        c.image_ref.as_str()
    } else {
        image
    };
    if let Some(tag) = tags.get(id) {
        return tag.clone();
    }
    if id.starts_with("sha256:") {
        output::short_id(id)
    } else {
        id.to_string()
    }
}

fn state_column(state: i32) -> &'static str {
    match api::ContainerState::try_from(state) {
        Ok(api::ContainerState::ContainerCreated) => "Created",
        Ok(api::ContainerState::ContainerRunning) => "Running",
        Ok(api::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

pub fn render(
    containers: &[api::Container],
    tags: &HashMap<String, String>,
    quiet: bool,
    format: Format,
    now: jiff::Timestamp,
) -> Result<String, CliError> {
    if quiet {
        return Ok(containers.iter().map(|c| format!("{}\n", c.id)).collect());
    }
    match format {
        Format::Table => {
            let rows = containers
                .iter()
                .map(|c| {
                    let meta = c.metadata.clone().unwrap_or_default();
                    vec![
                        output::short_id(&c.id),
                        image_column(c, tags),
                        output::ago(c.created_at, now),
                        state_column(c.state).into(),
                        meta.name,
                        meta.attempt.to_string(),
                        output::short_id(&c.pod_sandbox_id),
                        c.labels
                            .get(crate::kuberuntime::labels::POD_NAME)
                            .cloned()
                            .unwrap_or_else(|| "unknown".into()),
                    ]
                })
                .collect();
            Ok(output::table(
                &[
                    "CONTAINER",
                    "IMAGE",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "ATTEMPT",
                    "POD ID",
                    "POD",
                ],
                rows,
            ))
        }
        Format::Json | Format::Yaml => {
            let mut list = Vec::new();
            for c in containers {
                let mut value = output::crictl_names(c)?;
                output::enum_name(&mut value, "state", state_name);
                list.push(value);
            }
            output::document(format, serde_json::json!({ "containers": list }))
        }
    }
}
