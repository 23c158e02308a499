//! Step one of the pipeline: a KubeletConfiguration file (YAML or JSON) read into
//! [`KubeletConfiguration`]. A wrong type fails here with the field's path; fields the struct
//! does not have are kept, with their values, for [`super::upstream`] to judge.

use std::collections::BTreeSet;
use std::path::Path;

use super::{
    ConfigError, Effective, FieldError, FieldErrors, FlagOverrides, KubeletConfiguration, upstream,
    validate,
};

/// A field of the file the struct does not have: its path (`staticPodURL`,
/// `authentication.webhook.cacheTTL`) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownField {
    pub path: String,
    pub value: serde_json::Value,
}

/// A loaded file, before flags and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: KubeletConfiguration,
    pub unknown: Vec<UnknownField>,
    /// The file's name (for messages), or "flags" without a file.
    pub source_name: String,
}

impl Loaded {
    /// No file: kubelet's defaults.
    pub fn defaults() -> Self {
        Self {
            config: KubeletConfiguration::default(),
            unknown: Vec::new(),
            source_name: "flags".into(),
        }
    }

    /// Steps two and three: `flags` applied, then everything validated once (the unknown fields
    /// judged too). All problems come back together.
    pub fn finish(self, flags: &FlagOverrides) -> Result<Effective, ConfigError> {
        let mut config = self.config;
        flags.apply(&mut config);
        let judged = upstream::judge(&self.unknown);
        let mut errors = judged.refused;
        errors.extend(validate::validate(&config));
        if !errors.is_empty() {
            return Err(ConfigError::Invalid {
                source_name: self.source_name,
                errors: FieldErrors(dedup(errors)),
            });
        }
        Ok(Effective {
            config,
            ignored: judged.ignored,
        })
    }
}

fn dedup(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut seen = BTreeSet::new();
    errors
        .into_iter()
        .filter(|e| seen.insert((e.field.clone(), e.message.clone())))
        .collect()
}

/// Reads the file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `text` (the file `path`'s content).
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value
    };
    let mut unknown = BTreeSet::new();
    let mut record = |field: serde_ignored::Path<'_>| {
        unknown.insert(field.to_string());
    };
    let ignored = serde_ignored::Deserializer::new(&value, &mut record);
    let config: KubeletConfiguration =
        serde_path_to_error::deserialize(ignored).map_err(|e| ConfigError::Field {
            path: path.to_path_buf(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    let unknown = unknown
        .into_iter()
        .map(|path| UnknownField {
            value: lookup(&value, &path)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            path,
        })
        .collect();
    Ok(Loaded {
        config,
        unknown,
        source_name: path.display().to_string(),
    })
}

/// The value at a dotted path (`authentication.webhook.cacheTTL`, `list.0.key`).
fn lookup<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(value, |v, key| match v {
        serde_json::Value::Object(map) => map.get(key),
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}
