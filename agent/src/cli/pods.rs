//! `mini-kubelet pods`: the runtime's pod sandboxes.

use std::collections::HashMap;

use mk_cri::api;

use super::output::{self, Format};
use super::{CliError, Cri};

pub const EXAMPLES: &str = "Examples:
  mini-kubelet pods
  mini-kubelet pods --name web -o json
  mini-kubelet pods --label io.mini-kubelet.node-name=node1 -q
  mini-kubelet --container-runtime docker --root-dir /var/lib/kubelet pods";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only pods with this label (key=value); may be repeated.
    #[arg(short, long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only pods whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Only pods of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only ready pods (`SANDBOX_READY`).
    #[arg(long)]
    pub ready: bool,
    /// Print only the pod IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// `key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

pub fn state_name(state: i32) -> Option<&'static str> {
    api::PodSandboxState::try_from(state)
        .ok()
        .map(|s| s.as_str_name())
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let filter = api::PodSandboxFilter {
        label_selector: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        state: args.ready.then_some(api::PodSandboxStateValue {
            state: api::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let mut items = cri
        .client()
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(cri.err())?
        .items;
    items.retain(|s| {
        let meta = s.metadata.clone().unwrap_or_default();
        args.name
            .as_ref()
            .is_none_or(|n| meta.name.contains(n.as_str()))
            && args.namespace.as_ref().is_none_or(|n| meta.namespace == *n)
    });
    // Newest first, as crictl.
    items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    render(&items, args.quiet, args.output, jiff::Timestamp::now())
}

pub fn render(
    items: &[api::PodSandbox],
    quiet: bool,
    format: Format,
    now: jiff::Timestamp,
) -> Result<String, CliError> {
    if quiet {
        return Ok(items.iter().map(|s| format!("{}\n", s.id)).collect());
    }
    match format {
        Format::Table => {
            let rows = items
                .iter()
                .map(|s| {
                    let meta = s.metadata.clone().unwrap_or_default();
                    vec![
                        output::short_id(&s.id),
                        output::ago(s.created_at, now),
                        match api::PodSandboxState::try_from(s.state) {
                            Ok(api::PodSandboxState::SandboxReady) => "Ready".into(),
                            _ => "NotReady".into(),
                        },
                        meta.name,
                        meta.namespace,
                        meta.attempt.to_string(),
                        if s.runtime_handler.is_empty() {
                            "(default)".into()
                        } else {
                            s.runtime_handler.clone()
                        },
                    ]
                })
                .collect();
            Ok(output::table(
                &[
                    "POD ID",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "NAMESPACE",
                    "ATTEMPT",
                    "RUNTIME",
                ],
                rows,
            ))
        }
        Format::Json | Format::Yaml => {
            let mut list = Vec::new();
            for s in items {
                let mut value = output::crictl_names(s)?;
                output::enum_name(&mut value, "state", state_name);
                list.push(value);
            }
            output::document(format, serde_json::json!({ "items": list }))
        }
    }
}
