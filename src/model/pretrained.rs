//! Import of ImageNet weights into the backbone from a safetensors file whose names are
//! torchvision's (ResNet-50) or pretrained-models' (BN-Inception), i.e. the backbone's
//! variable names without the `backbone.` prefix. Any disagreement is reported in one
//! error listing missing names, unexpected names and shape mismatches.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Tensor;

use super::embedding_model::TRUNK_PREFIX;
use crate::config::{Backbone, ModelConfig};
use crate::error::{HistError, Result};

/// Classifier names of the source networks: present in ImageNet files, absent here.
const CLASSIFIER_PREFIXES: [&str; 2] = ["fc.", "last_linear."];
/// BatchNorm's step counter, which PyTorch saves and tch's BatchNorm does not keep.
const BATCH_COUNTER_SUFFIX: &str = "num_batches_tracked";
/// How many names of each kind of mismatch an error message lists.
const LISTED: usize = 5;

/// What an import copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The file read.
    pub path: PathBuf,
    /// Backbone variables overwritten (all of them).
    pub copied: usize,
    /// File tensors ignored: classifier weights and BatchNorm step counters.
    pub ignored: usize,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backbone weights: {} tensors from {} ({} classifier/counter tensors ignored)",
            self.copied,
            self.path.display(),
            self.ignored
        )
    }
}

/// Names of the backbone's variables that disagree with a weight file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameMismatch {
    /// Variables of the backbone the file lacks.
    pub missing: Vec<String>,
    /// File tensors the backbone has no variable for.
    pub unexpected: Vec<String>,
    /// `(name, file shape, backbone shape)` where both have the name.
    pub shapes: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl NameMismatch {
    /// True when the file fits the backbone exactly.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

impl fmt::Display for NameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let listed = |names: Vec<String>| {
            let more = names.len().saturating_sub(LISTED);
            let mut shown: Vec<String> = names.into_iter().take(LISTED).collect();
            if more > 0 {
                shown.push(format!("and {more} more"));
            }
            shown.join(", ")
        };
        if !self.missing.is_empty() {
            parts.push(format!("{} missing ({})", self.missing.len(), listed(self.missing.clone())));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("{} unexpected ({})", self.unexpected.len(), listed(self.unexpected.clone())));
        }
        if !self.shapes.is_empty() {
            let shapes = self.shapes.iter().map(|(n, file, model)| format!("{n}: file {file:?}, backbone {model:?}")).collect();
            parts.push(format!("{} shape mismatches ({})", self.shapes.len(), listed(shapes)));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// True for file tensors that are deliberately not imported.
fn ignored(name: &str) -> bool {
    CLASSIFIER_PREFIXES.iter().any(|p| name.starts_with(p)) || name.ends_with(BATCH_COUNTER_SUFFIX)
}

/// Compares the backbone's `(name, shape)`s with the file's, ignoring the file's
/// classifier and BatchNorm counters.
pub fn compare_names(backbone: &BTreeMap<String, Vec<i64>>, file: &BTreeMap<String, Vec<i64>>) -> NameMismatch {
    let mut m = NameMismatch::default();
    for (name, model_shape) in backbone {
        match file.get(name) {
            None => m.missing.push(name.clone()),
            Some(file_shape) if file_shape != model_shape => {
                m.shapes.push((name.clone(), file_shape.clone(), model_shape.clone()));
            }
            Some(_) => {}
        }
    }
    m.unexpected = file.keys().filter(|n| !backbone.contains_key(*n) && !ignored(n)).cloned().collect();
    m
}

/// The command that makes a fitting file for `backbone`.
fn fix_for(backbone: Backbone, path: &Path) -> String {
    let out = path.display();
    match backbone {
        Backbone::Resnet50 => format!("produce it with: python scripts/convert_torchvision.py --arch resnet50 --out {out}"),
        Backbone::BnInception => format!(
            "produce it with: python scripts/convert_torchvision.py --arch bn_inception --pth bn_inception-52deb4733.pth --out {out}"
        ),
        Backbone::SmallCnn => {
            "small_cnn has no ImageNet weights; the file must hold its variables without the `backbone.` prefix".to_string()
        }
    }
}

/// Copies every backbone variable of `vs` from the safetensors file at `path` (names
/// without `backbone.`), converting dtype and device. Nothing is copied unless the file
/// fits exactly (classifier tensors and `num_batches_tracked` aside).
pub fn import_backbone_weights(vs: &VarStore, path: &Path, backbone: Backbone) -> Result<ImportSummary> {
    let bad = |message: String| HistError::Io { path: path.to_path_buf(), message };
    if !path.is_file() {
        return Err(bad(format!("model.pretrained: no such file; {}", fix_for(backbone, path))));
    }
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("model.pretrained: not a readable safetensors file ({e}); {}", fix_for(backbone, path))))?;
    let vars: BTreeMap<String, Tensor> =
        vs.variables().into_iter().filter_map(|(n, t)| n.strip_prefix(TRUNK_PREFIX).map(|s| (s.to_string(), t))).collect();
    let model_shapes = vars.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let file_shapes = tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let mismatch = compare_names(&model_shapes, &file_shapes);
    if !mismatch.is_empty() {
        let arch = format!("{backbone:?}").to_lowercase();
        return Err(bad(format!("model.pretrained does not fit the {arch} backbone: {mismatch}; {}", fix_for(backbone, path))));
    }
    let _guard = tch::no_grad_guard();
    let mut ignored_count = 0;
    for (name, saved) in &tensors {
        let Some(var) = vars.get(name) else {
            ignored_count += 1;
            continue;
        };
        let mut dst = var.shallow_clone();
        dst.f_copy_(&saved.to_kind(var.kind()).to_device(var.device()))?;
    }
    Ok(ImportSummary { path: path.to_path_buf(), copied: vars.len(), ignored: ignored_count })
}

/// Imports `model.pretrained` into the backbone when the config names a file (relative
/// paths resolve against the working directory); `None` when it does not.
pub fn load_configured(vs: &VarStore, cfg: &ModelConfig) -> Result<Option<ImportSummary>> {
    cfg.pretrained.as_deref().map(|p| import_backbone_weights(vs, Path::new(p), cfg.backbone)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(items: &[(&str, &[i64])]) -> BTreeMap<String, Vec<i64>> {
        items.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn classifier_and_counters_are_not_unexpected() {
        let model = shapes(&[("conv1.weight", &[64, 3, 7, 7])]);
        let file = shapes(&[
            ("conv1.weight", &[64, 3, 7, 7]),
            ("fc.weight", &[1000, 2048]),
            ("last_linear.bias", &[1000]),
            ("bn1.num_batches_tracked", &[]),
        ]);
        assert!(compare_names(&model, &file).is_empty());
    }

    #[test]
    fn every_kind_of_mismatch_is_listed_with_counts() {
        let model = shapes(&[("a", &[1]), ("b", &[2]), ("c", &[3])]);
        let file = shapes(&[("a", &[1]), ("c", &[4]), ("d", &[5])]);
        let m = compare_names(&model, &file);
        assert_eq!(m.missing, vec!["b"]);
        assert_eq!(m.unexpected, vec!["d"]);
        assert_eq!(m.shapes, vec![("c".to_string(), vec![4], vec![3])]);
        assert_eq!(m.to_string(), "1 missing (b); 1 unexpected (d); 1 shape mismatches (c: file [4], backbone [3])");
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let model = names.iter().map(|n| (n.clone(), vec![1])).collect();
        let m = compare_names(&model, &BTreeMap::new());
        assert_eq!(m.to_string(), "8 missing (n0, n1, n2, n3, n4, and 3 more)");
    }
}
