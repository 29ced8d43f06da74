//! Whether a checkpoint can continue the current run, and the config fingerprint.
use super::digest::hex32;
use super::layout::step_dir_name;
use super::meta::{CheckpointMeta, Compat};
use crate::error::{HistError, Result};

/// Checks a checkpoint's metadata against the current run. The error is one line naming
/// every mismatch ("checkpoint step-000000100 was made with 100 training classes, this
/// config has 98; embedding_dim 128, this config has 512"), as a
/// [`HistError::Config`] from source "resume". World size and the config fingerprint are
/// not checked: the batch plan does not depend on the world size, and a changed config
/// (a new learning rate, say) may be intended; compare `meta.world_size` and
/// `meta.config_hash` yourself to mention them.
pub fn check_compat(meta: &CheckpointMeta, now: &Compat) -> Result<()> {
    let was = &meta.compat;
    let mut problems = Vec::new();
    if was.train_classes != now.train_classes {
        problems.push(format!(
            "{} training classes, this config has {}",
            was.train_classes, now.train_classes
        ));
    }
    if was.embedding_dim != now.embedding_dim {
        problems.push(format!(
            "embedding_dim {}, this config has {}",
            was.embedding_dim, now.embedding_dim
        ));
    }
    if was.backbone != now.backbone {
        problems.push(format!(
            "backbone {}, this config has {}",
            was.backbone, now.backbone
        ));
    }
    if was.dtype != now.dtype {
        problems.push(format!(
            "dtype {}, this config has {}",
            was.dtype, now.dtype
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(HistError::config(
        "resume",
        format!(
            "checkpoint {} was made with {}; it cannot continue this run",
            step_dir_name(meta.global_step),
            problems.join("; ")
        ),
    ))
}

/// Stable fingerprint of the resolved config's YAML text: `crc32c:` and 8 hex digits.
/// It tells "same config" from "changed config" at a glance in meta.json and logs; it is
/// not a security hash.
pub fn config_fingerprint(config_yaml: &str) -> String {
    format!("crc32c:{}", hex32(crc32c::crc32c(config_yaml.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        // CRC32C("123456789") = e3069283, the standard check value.
        assert_eq!(config_fingerprint("123456789"), "crc32c:e3069283");
        assert_ne!(
            config_fingerprint("lr: 0.1\n"),
            config_fingerprint("lr: 0.2\n")
        );
    }
}
