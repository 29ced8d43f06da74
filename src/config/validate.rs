//! Range checks on a deserialised config; each failure is one line naming the key,
//! the value and the bound.
use super::schema::{AutocastMode, Config, DType, DataSource, Sampling};

type Check = std::result::Result<(), String>;

fn positive(key: &str, v: f64) -> Check {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{key} must be a finite number > 0 (got {v})"))
    }
}

fn non_negative(key: &str, v: f64) -> Check {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{key} must be a finite number >= 0 (got {v})"))
    }
}

fn in_unit(key: &str, v: f64) -> Check {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key} must be in [0, 1) (got {v})"))
    }
}

fn at_least(key: &str, v: usize, min: usize) -> Check {
    if v >= min {
        Ok(())
    } else {
        Err(format!("{key} must be >= {min} (got {v})"))
    }
}

/// Checks every bound; returns the first violation.
pub fn validate(c: &Config) -> Check {
    if c.name.is_empty() || c.name.contains('/') || c.name.contains('\\') {
        return Err(format!("name must be a non-empty folder name without slashes (got {:?})", c.name));
    }
    parse_device(&c.device)?;
    validate_data(c)?;
    at_least("model.width", c.model.width.max(0) as usize, 1)?;
    at_least("model.embedding_dim", c.model.embedding_dim.max(0) as usize, 1)?;
    if c.model.pretrained.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err("model.pretrained must be a path to a .safetensors file (or left out)".to_string());
    }

    positive("loss.tau", c.loss.tau)?;
    positive("loss.alpha", c.loss.alpha)?;
    non_negative("loss.ls", c.loss.ls)?;
    at_least("loss.hgnn_hidden", c.loss.hgnn_hidden.max(0) as usize, 1)?;

    let o = &c.optim;
    positive("optim.lr", o.lr)?;
    if let Some(lr) = o.lr_embedding {
        positive("optim.lr_embedding", lr)?;
    }
    positive("optim.lr_ds", o.lr_ds)?;
    positive("optim.lr_hgnn_factor", o.lr_hgnn_factor)?;
    non_negative("optim.weight_decay", o.weight_decay)?;
    in_unit("optim.betas[0]", o.betas[0])?;
    in_unit("optim.betas[1]", o.betas[1])?;
    positive("optim.eps", o.eps)?;
    in_unit("optim.momentum", o.momentum)?;
    at_least("optim.lr_decay_step", o.lr_decay_step, 1)?;
    if !(o.lr_decay_gamma > 0.0 && o.lr_decay_gamma <= 1.0) {
        return Err(format!("optim.lr_decay_gamma must be in (0, 1] (got {})", o.lr_decay_gamma));
    }

    at_least("train.epochs", c.train.epochs, 1)?;
    validate_precision(c)?;
    at_least("train.log_every", c.train.log_every, 1)?;
    if c.train.warmup_epochs > c.train.epochs {
        return Err(format!(
            "train.warmup_epochs ({}) must not exceed train.epochs ({})",
            c.train.warmup_epochs, c.train.epochs
        ));
    }
    if c.eval.ks.is_empty() {
        return Err("eval.ks must list at least one K".to_string());
    }
    if let Some(k) = c.eval.ks.iter().find(|&&k| k == 0) {
        return Err(format!("eval.ks values must be >= 1 (got {k})"));
    }
    at_least("eval.batch_size", c.eval.batch_size, 1)?;
    positive("dist.bucket_mb", c.dist.bucket_mb)?;
    at_least("checkpoint.keep", c.checkpoint.keep, 1)?;
    Ok(())
}

fn validate_data(c: &Config) -> Check {
    let d = &c.data;
    at_least("data.batch_size", d.batch_size, 1)?;
    // Classes a batch needs at least: random batches need none in particular.
    let classes_per_batch = match d.sampling {
        Sampling::Random => 2,
        Sampling::Balanced => {
            at_least("data.ipc", d.ipc, 1)?;
            if !d.batch_size.is_multiple_of(d.ipc) {
                return Err(format!(
                    "data.ipc ({}) must divide data.batch_size ({}); e.g. set data.batch_size to {}",
                    d.ipc,
                    d.batch_size,
                    (d.batch_size / d.ipc).max(1) * d.ipc
                ));
            }
            if d.batch_size / d.ipc < 2 {
                return Err(format!(
                    "data.batch_size / data.ipc must be >= 2 classes per batch (got {} / {})",
                    d.batch_size, d.ipc
                ));
            }
            d.batch_size / d.ipc
        }
    };
    at_least("data.image_size", d.image_size, 16)?;
    validate_pipeline(d)?;
    match d.source {
        DataSource::Synthetic => {
            let s = &d.synthetic;
            at_least("data.synthetic.train_classes", s.train_classes, classes_per_batch)?;
            at_least("data.synthetic.test_classes", s.test_classes, 2)?;
            at_least("data.synthetic.images_per_class", s.images_per_class, 2)?;
            let max = crate::data::synthetic::MAX_CLASSES;
            if s.train_classes + s.test_classes > max {
                return Err(format!(
                    "data.synthetic.train_classes + test_classes = {} exceeds the {max} distinct classes the generator can make",
                    s.train_classes + s.test_classes
                ));
            }
        }
        DataSource::Folder => {
            if d.root.as_deref().is_none_or(str::is_empty) {
                return Err("data.root is required when data.source is folder".to_string());
            }
            let f = d.folder.train_fraction;
            if !(f > 0.0 && f < 1.0) {
                return Err(format!("data.folder.train_fraction must be in (0, 1) (got {f})"));
            }
        }
        DataSource::Cub | DataSource::Cars | DataSource::Sop | DataSource::Inshop => {
            if d.root.as_deref().is_none_or(str::is_empty) {
                let source = format!("{:?}", d.source).to_lowercase();
                return Err(format!("data.root is required when data.source is {source} (the dataset's folder; see docs/datasets.md)"));
            }
        }
    }
    Ok(())
}

/// Autocast lowers float32 operations: with f64 parameters it would do nothing (autocast
/// leaves float64 alone), so the combination is refused rather than silently ignored.
fn validate_precision(c: &Config) -> Check {
    if c.train.autocast != AutocastMode::Off && c.dtype == DType::F64 {
        let mode = format!("{:?}", c.train.autocast).to_lowercase();
        return Err(format!(
            "train.autocast: {mode} needs dtype: f32 (got dtype: f64); set dtype: f32, or train.autocast: off to keep f64"
        ));
    }
    Ok(())
}

/// Sizes, ranges and threads of the image pipeline (folder and benchmark sources).
fn validate_pipeline(d: &super::schema::DataConfig) -> Check {
    at_least("data.train_crop", d.train_crop, 8)?;
    at_least("data.test_crop", d.test_crop, 8)?;
    if d.test_resize < d.test_crop {
        return Err(format!(
            "data.test_resize ({}) must be >= data.test_crop ({}): the centre crop is cut from the resized image",
            d.test_resize, d.test_crop
        ));
    }
    let [lo, hi] = d.crop_scale;
    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
        return Err(format!("data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1 (got [{lo}, {hi}])"));
    }
    let [lo, hi] = d.crop_ratio;
    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
        return Err(format!("data.crop_ratio must be [lo, hi] with 0 < lo <= hi, finite (got [{lo}, {hi}])"));
    }
    at_least("data.prefetch_batches", d.prefetch_batches, 1)?;
    if d.loader_threads > 1024 {
        return Err(format!("data.loader_threads must be <= 1024, or 0 for one per core (got {})", d.loader_threads));
    }
    Ok(())
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> std::result::Result<tch::Device, String> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("device must be cpu, cuda or cuda:N (got {s:?})")),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_config_str, AutocastMode, ConfigSource};

    const BASE: &str = "data: {batch_size: 8, ipc: 2}\ntrain: {epochs: 1}\n";

    fn load(sets: &[&str]) -> crate::Result<crate::config::Config> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load_config_str(BASE, ConfigSource::Embedded("test"), &sets)
    }

    #[test]
    fn precision_switches_default_off_and_parse_every_mode() {
        let c = load(&[]).expect("base config");
        assert!(!c.model.channels_last);
        assert_eq!(c.train.autocast, AutocastMode::Off);
        for (text, mode) in [("off", AutocastMode::Off), ("bf16", AutocastMode::Bf16), ("fp16", AutocastMode::Fp16)] {
            let c = load(&[&format!("train.autocast={text}"), "model.channels_last=true"]).expect(text);
            assert_eq!(c.train.autocast, mode, "{text}");
            assert!(c.model.channels_last);
        }
        // A CPU device keeps configs with the switches valid (the worker turns them off).
        assert!(load(&["device=cpu", "train.autocast=fp16", "model.channels_last=true"]).is_ok());
    }

    #[test]
    fn unknown_autocast_mode_is_refused_naming_the_key() {
        let e = load(&["train.autocast=fp8"]).expect_err("fp8 is no mode").to_string();
        assert!(e.contains("train.autocast") && e.contains("bf16") && e.contains("fp16"), "{e}");
    }

    #[test]
    fn autocast_with_f64_is_one_line_naming_both_keys_and_the_fix() {
        let e = load(&["dtype=f64", "train.autocast=bf16"]).expect_err("autocast needs f32").to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        for part in ["train.autocast: bf16", "dtype: f32", "dtype: f64", "train.autocast: off"] {
            assert!(e.contains(part), "lacks {part:?}: {e}");
        }
        assert!(load(&["dtype=f64", "train.autocast=off", "model.channels_last=true"]).is_ok());
    }
}
