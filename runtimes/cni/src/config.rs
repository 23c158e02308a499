//! Network configurations: one network = a list of plugins (a `.conflist`), or a single plugin
//! (a `.conf` / `.json`, wrapped into a list of one), found in a config directory the way libcni
//! and kubelet find them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// The `cniVersion`s whose results this library reads (0.3.0 and later share the result format
/// of `interfaces` + `ips`). Older configs are refused with a clear reason.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The file extensions of network configs in a config directory.
pub const CONFIG_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// One network: a named, versioned chain of plugins. Two lists are equal when their content is
/// (wherever they were read from).
#[derive(Debug, Clone)]
pub struct NetworkConfigList {
    /// The network name (`name`), passed to every plugin.
    pub name: String,
    /// The spec version (`cniVersion`), passed to every plugin.
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// The JSON the list was read from (a single-plugin config: the list built around it), as
    /// libcni caches it with each ADD result.
    bytes: Vec<u8>,
    /// Where it came from (a file path), for messages.
    source: String,
}

impl PartialEq for NetworkConfigList {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.cni_version == other.cni_version
            && self.disable_check == other.disable_check
            && self.plugins == other.plugins
            && self.bytes == other.bytes
    }
}

/// One plugin of a network: its `type` (the binary's name) and its whole config object, passed
/// to it on stdin with `name`, `cniVersion`, `prevResult` and `runtimeConfig` filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the name of the plugin binary in the bin dirs.
    pub plugin_type: String,
    raw: Map<String, Value>,
}

impl PluginConfig {
    /// The plugin's config object as written.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The capabilities the plugin declares (`"capabilities": {"portMappings": true}`).
    pub fn capabilities(&self) -> BTreeSet<&str> {
        self.raw
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, enabled)| enabled.as_bool() == Some(true))
                    .map(|(name, _)| name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `major.minor.patch` of a CNI version (a missing part is 0); None when not numeric.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    let major = parts.next()?.ok()?;
    let minor = parts.next().transpose().ok()?.unwrap_or(0);
    let patch = parts.next().transpose().ok()?.unwrap_or(0);
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// True when `version` is `at_least` or newer (false when either is not a version).
pub fn version_at_least(version: &str, at_least: &str) -> bool {
    match (parse_version(version), parse_version(at_least)) {
        (Some(v), Some(min)) => v >= min,
        _ => false,
    }
}

/// The spec's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn object(bytes: &[u8], source: &str) -> Result<Map<String, Value>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        source_name: source.to_string(),
        reason,
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("not a JSON object".into())),
        Err(e) => Err(invalid(format!("not valid JSON: {e}"))),
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("{key:?} must be a string, not {other}")),
    }
}

/// Checks `name` and `cniVersion` of a network.
fn name_and_version(map: &Map<String, Value>) -> Result<(String, String), String> {
    let name = string_field(map, "name")?.unwrap_or_default();
    if name.is_empty() {
        return Err("no \"name\"".into());
    }
    if !valid_network_name(name) {
        return Err(format!(
            "network name {name:?} is invalid (letters, digits, '_', '.' and '-', starting with a letter or digit)"
        ));
    }
    let version = string_field(map, "cniVersion")?.unwrap_or_default();
    if version.is_empty() {
        return Err("no \"cniVersion\"".into());
    }
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "cniVersion {version:?} is not supported (supported: {})",
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    Ok((name.to_string(), version.to_string()))
}

fn plugin(raw: Map<String, Value>) -> Result<PluginConfig, String> {
    let plugin_type = string_field(&raw, "type")?.unwrap_or_default().to_string();
    if plugin_type.is_empty() {
        return Err("a plugin has no \"type\"".into());
    }
    if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(format!(
            "plugin type {plugin_type:?} must be a file name, not a path"
        ));
    }
    if let Some(caps) = raw.get("capabilities")
        && !caps.is_object()
    {
        return Err(format!(
            "plugin {plugin_type}: \"capabilities\" must be an object"
        ));
    }
    Ok(PluginConfig { plugin_type, raw })
}

impl NetworkConfigList {
    /// Parses a plugin list (the content of a `.conflist`). `source` names it in errors.
    pub fn from_conflist(bytes: &[u8], source: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            source_name: source.to_string(),
            reason,
        };
        let map = object(bytes, source)?;
        let (name, cni_version) = name_and_version(&map).map_err(invalid)?;
        let disable_check = match map.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "\"disableCheck\" must be a boolean, not {other}"
                )));
            }
        };
        let plugins = match map.get("plugins") {
            None | Some(Value::Null) => {
                let hint = if map.contains_key("type") {
                    " (a single plugin config must be named *.conf or *.json)"
                } else {
                    ""
                };
                return Err(invalid(format!("no \"plugins\"{hint}")));
            }
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(invalid("\"plugins\" is empty".into()));
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(raw) => plugin(raw.clone()),
                    other => Err(format!("plugin {i} is not an object: {other}")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?,
            Some(other) => {
                return Err(invalid(format!("\"plugins\" must be a list, not {other}")));
            }
        };
        Ok(Self {
            name,
            cni_version,
            disable_check,
            plugins,
            bytes: bytes.to_vec(),
            source: source.to_string(),
        })
    }

    /// Parses a single plugin config (the content of a `.conf` / `.json`) and wraps it into a
    /// list of one, as libcni's `ConfListFromConf` does. `source` names it in errors.
    pub fn from_conf(bytes: &[u8], source: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            source_name: source.to_string(),
            reason,
        };
        let map = object(bytes, source)?;
        if !map.contains_key("type") && map.contains_key("plugins") {
            return Err(invalid(
                "no \"type\" (a plugin list must be named *.conflist)".into(),
            ));
        }
        let (name, cni_version) = name_and_version(&map).map_err(invalid)?;
        let single = plugin(map.clone()).map_err(invalid)?;
        let list = serde_json::json!({
            "cniVersion": cni_version,
            "name": name,
            "plugins": [Value::Object(map)],
        });
        Ok(Self {
            name,
            cni_version,
            disable_check: false,
            plugins: vec![single],
            bytes: list.to_string().into_bytes(),
            source: source.to_string(),
        })
    }

    /// Reads one config file: `*.conflist` as a list, anything else as a single plugin.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let source = path.display().to_string();
        if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_conflist(&bytes, &source)
        } else {
            Self::from_conf(&bytes, &source)
        }
    }

    /// The loopback network kubelet's CNI plugin (and cri-dockerd) adds to every pod besides
    /// the default network: it brings `lo` up.
    pub fn loopback() -> Self {
        let list = serde_json::json!({
            "cniVersion": "0.3.1",
            "name": "cni-loopback",
            "plugins": [{ "type": "loopback" }],
        });
        let mut raw = Map::new();
        raw.insert("type".into(), Value::String("loopback".into()));
        Self {
            name: "cni-loopback".into(),
            cni_version: "0.3.1".into(),
            disable_check: false,
            plugins: vec![PluginConfig {
                plugin_type: "loopback".into(),
                raw,
            }],
            bytes: list.to_string().into_bytes(),
            source: "built-in loopback network".into(),
        }
    }

    /// The JSON the list was read from.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the list came from (a file path), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The candidate config files of `dir` (`*.conflist`, `*.conf`, `*.json`), sorted by name.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_dir = |source| ConfigError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        if wanted && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The default network of `dir`, as kubelet and containerd pick it: the first file by name that
/// is a valid config wins; invalid ones are skipped (logged, and listed in the error when none
/// is valid). A missing directory is [`ConfigError::NoConfig`].
pub fn load_default_network(dir: &Path) -> Result<NetworkConfigList, ConfigError> {
    let files = match conf_files(dir) {
        Ok(files) => files,
        Err(ConfigError::ReadDir { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(ConfigError::NoConfig {
                dir: dir.to_path_buf(),
                skipped: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    for path in files {
        match NetworkConfigList::from_file(&path) {
            Ok(list) => {
                for (skipped_path, reason) in &skipped {
                    tracing::warn!(file = %skipped_path.display(), reason, "skipped an invalid CNI config file");
                }
                return Ok(list);
            }
            Err(ConfigError::Invalid { reason, .. }) => skipped.push((path, reason)),
            Err(ConfigError::ReadFile { source, .. }) => skipped.push((path, source.to_string())),
            Err(e) => return Err(e),
        }
    }
    Err(ConfigError::NoConfig {
        dir: dir.to_path_buf(),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}},
        {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#;

    #[test]
    fn conflists_parse_or_say_why_not() {
        let list = NetworkConfigList::from_conflist(LIST.as_bytes(), "x").expect("valid");
        assert_eq!(list.name, "pods");
        assert_eq!(list.cni_version, "1.0.0");
        assert!(!list.disable_check);
        let types: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(
            list.plugins[1].capabilities(),
            BTreeSet::from(["portMappings"])
        );
        assert!(list.plugins[0].capabilities().is_empty());
        assert_eq!(list.bytes(), LIST.as_bytes());

        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-bad","plugins":[{"type":"x"}]}"#,
                "is invalid",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "no \"cniVersion\"",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "not supported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"plugins\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                "must be named *.conf",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "has no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#,
                "not a path",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[1]}"#,
                "not an object",
            ),
            (
                r#"{"cniVersion":1,"name":"n","plugins":[{"type":"x"}]}"#,
                "must be a string",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"x"}]}"#,
                "disableCheck",
            ),
        ];
        for (json, want) in cases {
            let err = NetworkConfigList::from_conflist(json.as_bytes(), "f.conflist")
                .expect_err(json)
                .to_string();
            assert!(
                err.contains(want) && err.contains("f.conflist"),
                "{json}: {err}"
            );
        }
        let disabled = NetworkConfigList::from_conflist(
            br#"{"cniVersion":"0.4.0","name":"n","disableCheck":"true","plugins":[{"type":"x"}]}"#,
            "x",
        )
        .expect("valid");
        assert!(disabled.disable_check);
    }

    #[test]
    fn single_plugin_configs_become_lists() {
        let conf = r#"{"cniVersion":"0.3.1","name":"single","type":"bridge","bridge":"b0"}"#;
        let list = NetworkConfigList::from_conf(conf.as_bytes(), "x").expect("valid");
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.3.1");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert_eq!(
            list.plugins[0].raw().get("bridge"),
            Some(&Value::String("b0".into()))
        );
        let wrapped = NetworkConfigList::from_conflist(list.bytes(), "cache").expect("relist");
        assert_eq!(wrapped.plugins, list.plugins);

        for (json, want) in [
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"type\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                "must be named *.conflist",
            ),
        ] {
            let err = NetworkConfigList::from_conf(json.as_bytes(), "f.conf")
                .expect_err(json)
                .to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn versions_compare() {
        assert_eq!(parse_version("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("0.4"), Some((0, 4, 0)));
        assert_eq!(parse_version("x"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn the_first_valid_file_by_name_wins() {
        let valid = |name: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge"}}]}}"#)
        };
        let single =
            |name: &str| format!(r#"{{"cniVersion":"1.0.0","name":"{name}","type":"ptp"}}"#);
        // (files, the network that wins or None, words the error must contain)
        type Case = (
            Vec<(&'static str, String)>,
            Option<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (vec![], None, vec!["no *.conflist"]),
            (
                vec![("20-b.conflist", valid("b")), ("10-a.conflist", valid("a"))],
                Some("a"),
                vec![],
            ),
            (
                vec![("10-a.conflist", "{".into()), ("20-b.conf", single("b"))],
                Some("b"),
                vec![],
            ),
            (
                vec![("05-x.json", single("x")), ("10-a.conflist", valid("a"))],
                Some("x"),
                vec![],
            ),
            (
                vec![("99-z.txt", valid("z")), ("README", valid("r"))],
                None,
                vec!["no *.conflist"],
            ),
            (
                vec![
                    ("10-a.conflist", "[]".into()),
                    ("20-b.conf", valid("b")), // a list in a .conf
                ],
                None,
                vec!["10-a.conflist: not a JSON object", "20-b.conf: no \"type\""],
            ),
        ];
        for (files, want, words) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, text) in &files {
                write(dir.path(), name, text);
            }
            match (load_default_network(dir.path()), want) {
                (Ok(list), Some(name)) => assert_eq!(list.name, name, "{files:?}"),
                (Err(e), None) => {
                    let msg = e.to_string();
                    for word in words {
                        assert!(msg.contains(word), "{files:?}: {msg}");
                    }
                }
                (other, _) => panic!("{files:?}: {other:?}"),
            }
        }
        let missing = load_default_network(Path::new("/nonexistent/cni/net.d"));
        assert!(
            matches!(missing, Err(ConfigError::NoConfig { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn loopback_is_a_valid_list() {
        let lo = NetworkConfigList::loopback();
        let parsed = NetworkConfigList::from_conflist(lo.bytes(), "lo").expect("valid");
        assert_eq!(parsed.plugins, lo.plugins);
        assert_eq!(parsed.name, "cni-loopback");
    }
}
