//! `mini-kubelet version`: the agent's version and the runtime's (CRI `Version`).

use mk_cri::api;

use super::output::{self, Format};
use super::{CliError, Cri};

pub const EXAMPLES: &str = "Examples:
  mini-kubelet version
  mini-kubelet --container-runtime-endpoint unix:///run/crio/crio.sock version -o json";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let answer = cri
        .client()
        .version(api::VersionRequest {
            version: "v1".into(),
        })
        .await
        .map_err(cri.err())?;
    render(cri.client().endpoint(), &answer, args.output)
}

pub fn render(
    endpoint: &str,
    answer: &api::VersionResponse,
    format: Format,
) -> Result<String, CliError> {
    let fields = [
        ("agentVersion", env!("CARGO_PKG_VERSION")),
        ("kubeletVersion", crate::version::KUBELET_VERSION),
        ("runtimeEndpoint", endpoint),
        ("runtimeName", &answer.runtime_name),
        ("runtimeVersion", &answer.runtime_version),
        ("runtimeApiVersion", &answer.runtime_api_version),
    ];
    match format {
        Format::Table => {
            let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
            Ok(fields
                .iter()
                .map(|(key, value)| {
                    let mut label = key.to_string();
                    if let Some(first) = label.get_mut(0..1) {
                        first.make_ascii_uppercase();
                    }
                    format!("{:width$}{value}\n", format!("{label}:"))
                })
                .collect())
        }
        Format::Json | Format::Yaml => output::document(
            format,
            serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect(),
            ),
        ),
    }
}
