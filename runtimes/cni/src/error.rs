//! Errors: [`ConfigError`] for finding and reading network configurations, [`CniError`] for
//! running a plugin chain, [`PluginError`] for the error a plugin itself reported.

use std::path::PathBuf;
use std::time::Duration;

/// Why no network configuration could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration directory could not be read.
    #[error("reading CNI config directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One configuration file could not be read.
    #[error("reading CNI config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One configuration (a file, or bytes given directly) is not a valid network configuration.
    #[error("invalid CNI network config {source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
    /// The directory holds no valid configuration: every candidate file was skipped (each with
    /// its reason), or there was none.
    #[error("no valid CNI network config in {dir}{}", skipped_list(.skipped))]
    NoConfig {
        dir: PathBuf,
        /// The files that were tried, with why each was skipped.
        skipped: Vec<(PathBuf, String)>,
    },
}

fn skipped_list(skipped: &[(PathBuf, String)]) -> String {
    if skipped.is_empty() {
        return " (no *.conflist, *.conf or *.json file)".to_string();
    }
    let files: Vec<String> = skipped
        .iter()
        .map(|(path, reason)| format!("{}: {reason}", path.display()))
        .collect();
    format!(" (skipped {})", files.join("; "))
}

/// The error JSON a plugin prints on failure (`code`, `msg`, `details`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error code {code}){}", details_suffix(.details))]
pub struct PluginError {
    /// The CNI error code: 1-99 are the spec's well-known codes (e.g. 7 = invalid network
    /// config, 11 = try again later), 100+ are the plugin's own.
    pub code: u32,
    pub msg: String,
    pub details: String,
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

impl PluginError {
    /// The spec's code for "try again later" (a transient condition).
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// The failure of one CNI operation.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No executable named like the plugin's `type` in any of the bin dirs.
    #[error("CNI plugin {plugin:?} not found in {}", display_dirs(.dirs))]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// The plugin binary could not be started.
    #[error("starting CNI plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The plugin did not finish in time (it is killed).
    #[error("CNI plugin {plugin} {command} did not finish within {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    /// The plugin reported an error in the CNI error format.
    #[error("CNI plugin {plugin} {command} failed: {error}")]
    Plugin {
        plugin: String,
        command: &'static str,
        #[source]
        error: PluginError,
    },
    /// The plugin failed without printing a CNI error.
    #[error("CNI plugin {plugin} {command} failed ({status}): {output}")]
    Failed {
        plugin: String,
        command: &'static str,
        status: String,
        /// Its stdout and stderr, trimmed.
        output: String,
    },
    /// The plugin succeeded but its output is not a CNI result.
    #[error("CNI plugin {plugin} {command} printed an invalid result: {reason}")]
    InvalidResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    /// A request the runtime cannot make (e.g. CHECK of a pre-0.4.0 network).
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing the result cache, or talking to a plugin's pipes.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A cached result that cannot be read back.
    #[error("invalid CNI cache file {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", dirs.join(", "))
}

impl CniError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The CNI error the plugin reported, if it reported one.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Self::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_reason() {
        let err = ConfigError::NoConfig {
            dir: PathBuf::from("/etc/cni/net.d"),
            skipped: vec![(
                PathBuf::from("/etc/cni/net.d/10-a.conf"),
                "no \"type\"".into(),
            )],
        };
        assert_eq!(
            err.to_string(),
            "no valid CNI network config in /etc/cni/net.d (skipped /etc/cni/net.d/10-a.conf: no \"type\")"
        );
        let empty = ConfigError::NoConfig {
            dir: PathBuf::from("/x"),
            skipped: vec![],
        };
        assert!(empty.to_string().contains("no *.conflist"), "{empty}");
        let plugin = CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            error: PluginError {
                code: 7,
                msg: "bad config".into(),
                details: "x".into(),
            },
        };
        assert_eq!(
            plugin.to_string(),
            "CNI plugin bridge ADD failed: bad config (CNI error code 7): x"
        );
        assert_eq!(plugin.plugin_error().map(|e| e.code), Some(7));
    }
}
