//! Reading a YAML file (or the embedded demo), applying `--set` overrides, deserialising
//! strictly and validating.
use std::path::Path;

use super::overrides::apply_override;
use super::schema::Config;
use super::validate::validate;
use crate::error::{HistError, Result};

/// Where a config's text came from, for error messages.
#[derive(Debug, Clone)]
pub enum ConfigSource<'a> {
    /// A file on disk.
    File(&'a Path),
    /// Text compiled into the binary, with a label such as `configs/demo.yaml (embedded)`.
    Embedded(&'a str),
}

impl ConfigSource<'_> {
    fn label(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded(label) => label.to_string(),
        }
    }
}

/// Reads, overrides, deserialises and validates the config file at `path`.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        HistError::config(path.display().to_string(), format!("cannot read it: {e}"))
    })?;
    load_config_str(&text, ConfigSource::File(path), overrides)
}

/// Like [`load_config`] but from text already in memory.
pub fn load_config_str(text: &str, source: ConfigSource<'_>, overrides: &[String]) -> Result<Config> {
    let label = source.label();
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| HistError::config(&label, format!("not valid YAML: {e}")))?;
    if value.is_null() {
        value = serde_yaml_ng::Value::Mapping(Default::default());
    }
    for item in overrides {
        apply_override(&mut value, item)
            .map_err(|message| HistError::config(&label, message))?;
    }
    let label = if overrides.is_empty() { label } else { format!("{label} (with --set overrides)") };
    let config: Config = serde_path_to_error::deserialize(value)
        .map_err(|e| HistError::config(&label, describe_serde_error(&e)))?;
    validate(&config).map_err(|message| HistError::config(&label, message))?;
    Ok(config)
}

/// Turns serde's messages into one line that names the full key path.
fn describe_serde_error(err: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> String {
    let path = err.path().to_string();
    let inner = err.inner().to_string();
    let inner = inner.lines().next().unwrap_or_default().to_string();
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        let parent = parent_path(&path, key);
        let full = if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") };
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        return format!("unknown key `{full}` (expected {expected})");
    }
    if let Some(rest) = inner.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default();
        let full = if path == "." || path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
        return format!("missing required key `{full}`");
    }
    if path == "." || path.is_empty() {
        inner
    } else {
        format!("key `{path}`: {inner}")
    }
}

/// serde_path_to_error reports an unknown field's path either with or without the key
/// itself depending on the format; strip it if present.
fn parent_path(path: &str, key: &str) -> String {
    if path == "." {
        return String::new();
    }
    match path.strip_suffix(key) {
        Some(p) => p.trim_end_matches('.').to_string(),
        None => path.to_string(),
    }
}
