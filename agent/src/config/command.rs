//! `mini-kubelet config validate [--config] FILE [flags…]` (the effective configuration as YAML,
//! or every error and exit code 1) and `mini-kubelet config reference` (the Markdown reference).

use std::io::Write;
use std::path::PathBuf;

use super::{API_VERSION, ConfigError, FlagOverrides, KIND, KubeletConfiguration, reference};

/// `mini-kubelet config …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Load the file, apply the flags, validate everything: print the effective configuration
    /// as YAML, or every error with its field's path (exit code 1).
    Validate(Box<ValidateArgs>),
    /// Print the reference of every supported KubeletConfiguration field (Markdown).
    Reference,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// KubeletConfiguration file (kubelet.config.k8s.io/v1beta1).
    #[arg(long = "config", conflicts_with = "file")]
    pub config: Option<PathBuf>,
    /// The same file, given without --config.
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: FlagOverrides,
}

/// Why the effective configuration could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// The effective configuration as a KubeletConfiguration file (apiVersion and kind set).
pub fn to_yaml(config: &KubeletConfiguration) -> Result<String, PrintError> {
    let config = KubeletConfiguration {
        api_version: Some(API_VERSION.into()),
        kind: Some(KIND.into()),
        ..config.clone()
    };
    serde_saphyr::to_string(&config).map_err(|e| PrintError::Yaml(e.to_string()))
}

impl ConfigCommand {
    /// Runs the command, writing to `out` and `err`; returns the process exit code.
    pub fn run(&self, out: &mut impl Write, err: &mut impl Write) -> i32 {
        match self {
            ConfigCommand::Reference => match out.write_all(reference::markdown().as_bytes()) {
                Ok(()) => 0,
                Err(_) => 1,
            },
            ConfigCommand::Validate(args) => validate(args, out, err),
        }
    }
}

fn validate(args: &ValidateArgs, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let file = args.config.as_deref().or(args.file.as_deref());
    // Failing writes to stdout/stderr leave nothing better to do than the exit code.
    match super::resolve(file, &args.flags) {
        Ok(effective) => {
            for warning in &effective.ignored {
                let _ = writeln!(err, "warning: {warning}");
            }
            match to_yaml(&effective.config) {
                Ok(yaml) => match out.write_all(yaml.as_bytes()) {
                    Ok(()) => 0,
                    Err(_) => 1,
                },
                Err(e) => {
                    let _ = writeln!(err, "{e}");
                    1
                }
            }
        }
        Err(e) => {
            let _ = match &e {
                ConfigError::Invalid { .. } => writeln!(err, "{e}"),
                other => writeln!(err, "invalid configuration: {other}"),
            };
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], file_text: Option<&str>) -> (i32, String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubelet.yaml");
        let mut argv = vec!["config".to_string()];
        if let Some(text) = file_text {
            std::fs::write(&path, text).expect("write");
            argv.push(path.display().to_string());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ConfigCommand,
        }
        let mut full = vec!["config".to_string(), "validate".to_string()];
        full.extend(argv.into_iter().skip(1));
        let cli = <Cli as clap::Parser>::try_parse_from(&full).expect("arguments");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli.command.run(&mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn prints_the_effective_configuration_which_reads_back_the_same() {
        let text = "kind: KubeletConfiguration\nsyncFrequency: 90s\nevictionSoft: {memory.available: 1Gi}\n\
                    evictionSoftGracePeriod: {memory.available: 1m30s}\nkubeAPIQPS: 5\n\
                    logging: {format: json, verbosity: 4}\nshutdownGracePeriod: 1h\n\
                    registerWithTaints: [{key: a, value: b, effect: NoSchedule}]\n";
        let (code, out, err) = run(&["--max-pods", "17", "--port", "0"], Some(text));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("syncFrequency: 1m30s"), "{out}");
        assert!(out.contains("shutdownGracePeriod: 1h0m0s"), "{out}");
        assert!(
            out.contains("apiVersion: kubelet.config.k8s.io/v1beta1"),
            "{out}"
        );
        assert!(
            err.contains("warning: kubeAPIQPS: accepted and ignored"),
            "{err}"
        );
        let printed = KubeletConfiguration::parse(&out, "printed.yaml".as_ref())
            .expect("the printed configuration is valid");
        assert!(printed.ignored.is_empty(), "{:?}", printed.ignored);
        let flags = FlagOverrides {
            max_pods: Some(17),
            port: Some(0),
            ..Default::default()
        };
        let mut original = super::super::load::parse(text, "kubelet.yaml".as_ref())
            .expect("parses")
            .finish(&flags)
            .expect("valid")
            .config;
        original.api_version = Some(API_VERSION.into());
        assert_eq!(printed.config, original);
        assert_eq!(printed.config.max_pods, 17);
        assert_eq!(printed.config.logging.format, "json");
        // Printing what was read back gives the same text.
        assert_eq!(to_yaml(&printed.config).expect("yaml"), out);
    }

    #[test]
    fn lists_every_error_with_its_path_and_exits_1() {
        let (code, out, err) = run(
            &["--max-pods", "0"],
            Some(
                "kubeReserved: {cpu: lots}\nevictionHard: {memory.available: -1Gi}\n\
                 staticPodURL: http://example/pods\ncgroupDriver: openrc\n\
                 featureGates: {NoSuchGate: true}\n",
            ),
        );
        assert_eq!(code, 1);
        assert!(out.is_empty(), "{out}");
        for path in [
            "kubeReserved[cpu]:",
            "evictionHard[memory.available]:",
            "staticPodURL:",
            "cgroupDriver:",
            "featureGates[NoSuchGate]:",
            "maxPods:",
        ] {
            assert!(err.contains(path), "{path} missing from:\n{err}");
        }
    }

    #[test]
    fn without_a_file_the_defaults_and_flags_are_checked() {
        let (code, out, _) = run(&["--cgroup-driver", "systemd"], None);
        assert_eq!(code, 0);
        assert!(out.contains("cgroupDriver: systemd"), "{out}");
        let (code, _, err) = run(&["--enforce-node-allocatable", "pods,kube-reserved"], None);
        assert_eq!(code, 1);
        assert!(err.contains("enforceNodeAllocatable[1]:"), "{err}");
    }

    #[test]
    fn reference_prints_markdown() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(ConfigCommand::Reference.run(&mut out, &mut err), 0);
        assert_eq!(String::from_utf8_lossy(&out), reference::markdown());
    }
}
