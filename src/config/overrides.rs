//! `--set key.path=value` overrides applied to the parsed YAML tree before typing.
use serde_yaml_ng::{Mapping, Value};

/// Sets `key.path` in `root` to the YAML value after `=`; creates missing mappings.
pub fn apply_override(root: &mut Value, item: &str) -> std::result::Result<(), String> {
    let (key_path, raw_value) = item
        .split_once('=')
        .ok_or_else(|| format!("--set {item}: expected key.path=value"))?;
    let key_path = key_path.trim();
    if key_path.is_empty() || key_path.split('.').any(str::is_empty) {
        return Err(format!("--set {item}: `{key_path}` is not a key path like data.batch_size"));
    }
    let value: Value = serde_yaml_ng::from_str(raw_value)
        .map_err(|e| format!("--set {item}: value is not valid YAML: {e}"))?;
    let mut node = root;
    for segment in key_path.split('.') {
        if !node.is_mapping() {
            return Err(format!("--set {item}: `{segment}` is below a key that is not a mapping"));
        }
        let map = node.as_mapping_mut().ok_or_else(|| format!("--set {item}: not a mapping"))?;
        let key = Value::String(segment.to_string());
        if !map.contains_key(&key) {
            map.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        node = map.get_mut(&key).ok_or_else(|| format!("--set {item}: cannot reach `{segment}`"))?;
    }
    *node = value;
    Ok(())
}
