//! A split of a dataset held in memory as uint8 images plus labels.
use tch::{Device, Kind, Tensor};

/// Images of one split, decoded and resized, kept as uint8 to save memory.
#[derive(Debug)]
pub struct ImageSet {
    /// uint8 tensor [N, 3, H, W] on the CPU.
    pub images: Tensor,
    /// Class label of every image, 0-based and dense within the split.
    pub labels: Vec<i64>,
    /// Human-readable class names, indexed by label.
    pub class_names: Vec<String>,
}

/// Disjoint train and test splits (test classes are never seen in training).
#[derive(Debug)]
pub struct Splits {
    /// Training split.
    pub train: ImageSet,
    /// Test split (retrieval evaluation on unseen classes).
    pub test: ImageSet,
}

/// Per-channel mean and std used to normalise uint8 images after scaling to [0, 1].
const MEAN: [f64; 3] = [0.5, 0.5, 0.5];
const STD: [f64; 3] = [0.25, 0.25, 0.25];

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes (labels are 0..num_classes).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Normalised float batch [n, 3, H, W] of the images at `indices`, with the listed
    /// images mirrored left-right, on `device` in `kind`.
    pub fn batch(&self, indices: &[usize], flip: &[bool], kind: Kind, device: Device) -> Tensor {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx);
        let mut x = self.images.index_select(0, &idx).to_kind(kind) / 255.0;
        if flip.iter().any(|&f| f) {
            let mask: Vec<bool> = (0..indices.len()).map(|i| flip.get(i).copied().unwrap_or(false)).collect();
            let mask = Tensor::from_slice(&mask).view([-1, 1, 1, 1]);
            x = x.flip([3]).where_self(&mask, &x);
        }
        let mean = Tensor::from_slice(&MEAN).to_kind(kind).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&STD).to_kind(kind).view([1, 3, 1, 1]);
        ((x - mean) / std).to_device(device)
    }

    /// Labels of the images at `indices` as an int64 tensor on `device`.
    pub fn batch_labels(&self, indices: &[usize], device: Device) -> Tensor {
        let y: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        Tensor::from_slice(&y).to_device(device)
    }
}
