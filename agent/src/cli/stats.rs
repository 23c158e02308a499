//! `mini-kubelet stats`: the containers' CPU, memory and writable-layer usage (CRI
//! `ListContainerStats`), as `crictl stats`.

use std::collections::HashMap;
use std::time::Duration;

use mk_cri::api;

use super::output::{self, Format};
use super::{CliError, Cri, resolve};

pub const EXAMPLES: &str =
    "CPU % is the runtime's usage_nano_cores where it reports it; otherwise two samples are taken
one second apart and the rate is computed from the cumulative CPU time.

Examples:
  mini-kubelet stats
  mini-kubelet stats -a                     # exited containers too
  mini-kubelet stats main                   # one container (ID, unique prefix or name)
  mini-kubelet stats --label io.kubernetes.pod.namespace=default -o json";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// One container: ID, unique ID prefix, or name.
    pub id: Option<String>,
    /// All containers the runtime reports stats for (exited ones too); default: running only.
    #[arg(short, long)]
    pub all: bool,
    /// Only containers with this label (key=value); may be repeated.
    #[arg(short, long = "label", value_parser = super::pods::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// How far apart the two samples of a runtime without `usage_nano_cores` are.
const SAMPLE_GAP: Duration = Duration::from_secs(1);

pub async fn run(cri: &Cri, args: &Args) -> Result<String, CliError> {
    let mut filter = api::ContainerStatsFilter {
        label_selector: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    if let Some(query) = &args.id {
        let containers = resolve::all_containers(cri).await?;
        filter.id = resolve::container(&containers, query)?.id.clone();
    }
    let sample = || async {
        cri.client()
            .list_container_stats(api::ListContainerStatsRequest {
                filter: Some(filter.clone()),
            })
            .await
            .map(|r| r.stats)
            .map_err(cri.err())
    };
    let first = sample().await?;
    let has_rate =
        |s: &api::ContainerStats| s.cpu.as_ref().is_some_and(|c| c.usage_nano_cores.is_some());
    let mut stats = first.clone();
    if !first.iter().all(has_rate) {
        tokio::time::sleep(SAMPLE_GAP).await;
        stats = sample().await?;
        fill_rates(&first, &mut stats);
    }
    if !args.all && args.id.is_none() {
        let running: std::collections::HashSet<String> = cri
            .client()
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    state: Some(api::ContainerStateValue {
                        state: api::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .map_err(cri.err())?
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        stats.retain(|s| running.contains(id(s)));
    }
    stats.sort_by(|a, b| name(a).cmp(name(b)));
    render(&stats, args.output)
}

fn id(s: &api::ContainerStats) -> &str {
    s.attributes.as_ref().map_or("", |a| a.id.as_str())
}

fn name(s: &api::ContainerStats) -> &str {
    s.attributes
        .as_ref()
        .and_then(|a| a.metadata.as_ref())
        .map_or("", |m| m.name.as_str())
}

/// Sets `usage_nano_cores` of `later` samples that lack it from the cumulative CPU time of the
/// `earlier` sample of the same container.
pub fn fill_rates(earlier: &[api::ContainerStats], later: &mut [api::ContainerStats]) {
    for stat in later.iter_mut() {
        let Some(before) = earlier.iter().find(|e| id(e) == id(stat)) else {
            continue;
        };
        let (Some(old), Some(new)) = (before.cpu.as_ref(), stat.cpu.as_mut()) else {
            continue;
        };
        if new.usage_nano_cores.is_some() {
            continue;
        }
        let (Some(old_used), Some(new_used)) = (
            old.usage_core_nano_seconds.as_ref(),
            new.usage_core_nano_seconds.as_ref(),
        ) else {
            continue;
        };
        let elapsed = u64::try_from(new.timestamp.saturating_sub(old.timestamp)).unwrap_or(0);
        if elapsed == 0 {
            continue;
        }
        let used = new_used.value.saturating_sub(old_used.value);
        let rate = u128::from(used) * 1_000_000_000 / u128::from(elapsed);
        new.usage_nano_cores = Some(api::UInt64Value {
            value: u64::try_from(rate).unwrap_or(u64::MAX),
        });
    }
}

pub fn render(stats: &[api::ContainerStats], format: Format) -> Result<String, CliError> {
    match format {
        Format::Table => {
            let rows = stats
                .iter()
                .map(|s| {
                    let cpu = s
                        .cpu
                        .as_ref()
                        .and_then(|c| c.usage_nano_cores.as_ref())
                        .map_or("-".to_string(), |n| {
                            format!("{}.{:02}", n.value / 10_000_000, n.value / 100_000 % 100)
                        });
                    let memory = s
                        .memory
                        .as_ref()
                        .and_then(|m| m.working_set_bytes.as_ref())
                        .map_or("-".to_string(), |b| output::human_size(b.value));
                    let layer = s.writable_layer.as_ref();
                    let disk = layer
                        .and_then(|l| l.used_bytes.as_ref())
                        .map_or("-".to_string(), |b| output::human_size(b.value));
                    let inodes = layer
                        .and_then(|l| l.inodes_used.as_ref())
                        .map_or("-".to_string(), |n| n.value.to_string());
                    vec![
                        output::short_id(id(s)),
                        name(s).into(),
                        cpu,
                        memory,
                        disk,
                        inodes,
                    ]
                })
                .collect();
            Ok(output::table(
                &["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"],
                rows,
            ))
        }
        Format::Json | Format::Yaml => {
            let list = stats
                .iter()
                .map(output::crictl_names)
                .collect::<Result<Vec<_>, _>>()?;
            output::document(format, serde_json::json!({ "stats": list }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, timestamp: i64, used: u64, rate: Option<u64>) -> api::ContainerStats {
        api::ContainerStats {
            attributes: Some(api::ContainerAttributes {
                id: id.into(),
                ..Default::default()
            }),
            cpu: Some(api::CpuUsage {
                timestamp,
                usage_core_nano_seconds: Some(api::UInt64Value { value: used }),
                usage_nano_cores: rate.map(|value| api::UInt64Value { value }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_two_samples_where_the_runtime_gives_none() {
        let earlier = [sample("a", 1_000_000_000, 100_000_000, None)];
        // 0.25 s of CPU over 0.5 s: half a core.
        let mut later = [
            sample("a", 1_500_000_000, 350_000_000, None),
            sample("b", 1_500_000_000, 1, Some(7)),
            sample("c", 1_500_000_000, 1, None),
        ];
        fill_rates(&earlier, &mut later);
        let rate = |s: &api::ContainerStats| {
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_nano_cores.as_ref())
                .map(|v| v.value)
        };
        assert_eq!(rate(&later[0]), Some(500_000_000));
        // The runtime's own rate stays; a container without an earlier sample gets none.
        assert_eq!(rate(&later[1]), Some(7));
        assert_eq!(rate(&later[2]), None);
        let table = render(&later[..1], Format::Table).expect("table");
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(row[1], "50.00", "{table}");
    }
}
