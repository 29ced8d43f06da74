//! Embedding a whole split in batches with the model in evaluation mode, optionally
//! sharded over the ranks of a job. Image files go through the pipeline's test transform;
//! under `data.on_bad_image: skip` unreadable images are left out, identically on every rank.
use std::ops::Range;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::data::pipeline::{BatchPlan, ImageJob, ImageOp, Loader, PipelineSpec, SplitImages};
use crate::dist::gather::gather;
use crate::dist::Collectives;
use crate::error::Result;
use crate::model::EmbeddingModel;
use crate::progress::Progress;

/// The embeddings of a split's readable images.
#[derive(Debug)]
pub struct Embedded {
    /// [N', D] on the CPU, one row per entry of `kept`.
    pub embeddings: Tensor,
    /// The images (indices into the split, ascending) that could be read: all N unless
    /// unreadable ones were skipped.
    pub kept: Vec<usize>,
}

impl Embedded {
    /// Number of images of the split that were skipped.
    pub fn skipped(&self, split_len: usize) -> usize {
        split_len - self.kept.len()
    }
}

/// Embeddings of the images `range` of `split`, [range.len(), D] in order (zero rows for
/// skipped images), and which rows are real; no gradients.
fn embed_range(
    model: &EmbeddingModel,
    split: &SplitImages,
    spec: &Arc<PipelineSpec>,
    range: Range<usize>,
    batch: usize,
    kind: Kind,
    device: Device,
) -> Result<(Tensor, Vec<bool>)> {
    let _guard = tch::no_grad_guard();
    let batch = batch.max(1);
    let chunks: Vec<Range<usize>> = range.clone().step_by(batch).map(|s| s..(s + batch).min(range.end)).collect();
    let bar = Progress::new("embedding", range.len() as u64, "img", true);
    let embed = |images: &Tensor| model.forward(&images.to_kind(kind).to_device(device), false).to_device(Device::Cpu);
    let mut parts = Vec::new();
    let mut present = Vec::with_capacity(range.len());
    match split {
        SplitImages::Memory(set) => {
            for chunk in &chunks {
                let idx: Vec<usize> = chunk.clone().collect();
                parts.push(embed(&set.batch(&idx, &[], kind, Device::Cpu)));
                present.extend(std::iter::repeat_n(true, idx.len()));
                bar.inc(idx.len() as u64);
            }
            if parts.is_empty() {
                // An empty shard still has the embedding width, so the gather's shapes agree.
                let size = set.images.size();
                parts.push(embed(&Tensor::zeros([0, 3, size[2], size[3]], (kind, Device::Cpu))));
            }
        }
        SplitImages::Files(files) => {
            let plan = chunks.into_iter().map(|c| BatchPlan {
                id: (c.start, 0),
                jobs: c.map(|sample| ImageJob { sample, op: ImageOp::Test }).collect(),
            });
            let mut loader = Loader::new(Arc::clone(files), Arc::clone(spec), Box::new(plan))?;
            while let Some(loaded) = loader.next_batch() {
                let loaded = loaded?;
                let out = embed(&loaded.images);
                parts.push(scatter_rows(&out, &loaded.present));
                bar.inc(loaded.present.len() as u64);
                present.extend(loaded.present);
            }
            if parts.is_empty() {
                let side = spec.test_crop as i64;
                parts.push(embed(&Tensor::zeros([0, 3, side, side], (kind, Device::Cpu))));
            }
        }
    }
    Ok((Tensor::cat(&parts, 0), present))
}

/// `rows` [n', D] placed at the `true` positions of `present` in an [n, D] of zeros.
fn scatter_rows(rows: &Tensor, present: &[bool]) -> Tensor {
    if rows.size()[0] == present.len() as i64 {
        return rows.shallow_clone();
    }
    let idx: Vec<i64> = (0..present.len() as i64).filter(|&i| present[i as usize]).collect();
    Tensor::zeros([present.len() as i64, rows.size()[1]], (rows.kind(), rows.device())).index_copy(0, &Tensor::from_slice(&idx), rows)
}

/// Only the rows of `all` marked present.
fn keep_present(all: &Tensor, present: &[bool]) -> Embedded {
    let kept: Vec<usize> = (0..present.len()).filter(|&i| present[i]).collect();
    let embeddings = if kept.len() == present.len() {
        all.shallow_clone()
    } else {
        let idx: Vec<i64> = kept.iter().map(|&i| i as i64).collect();
        all.index_select(0, &Tensor::from_slice(&idx))
    };
    Embedded { embeddings, kept }
}

/// Embeddings of every readable image of `split`, in order, computed without gradients.
pub fn embed_all(
    model: &EmbeddingModel,
    split: &SplitImages,
    spec: &Arc<PipelineSpec>,
    batch: usize,
    kind: Kind,
    device: Device,
) -> Result<Embedded> {
    let (all, present) = embed_range(model, split, spec, 0..split.len(), batch, kind, device)?;
    Ok(keep_present(&all, &present))
}

/// Like [`embed_all`], but each rank embeds a contiguous shard of ⌈N/W⌉ images and the
/// shards are gathered, so every rank returns the same result as a one-rank run. The last
/// shards are padded to the common size for the gather, with one extra column marking
/// real rows (padding and skipped images are 0), and only real rows are kept.
pub fn embed_sharded(
    pg: &mut dyn Collectives,
    model: &EmbeddingModel,
    split: &SplitImages,
    spec: &Arc<PipelineSpec>,
    batch: usize,
    kind: Kind,
    device: Device,
) -> Result<Embedded> {
    let (w, r, n) = (pg.world_size(), pg.rank(), split.len());
    if w == 1 {
        return embed_all(model, split, spec, batch, kind, device);
    }
    let shard = n.div_ceil(w);
    let start = (r * shard).min(n);
    let end = ((r + 1) * shard).min(n);
    let (local, present) = embed_range(model, split, spec, start..end, batch, kind, device)?;
    let flags: Vec<f64> = present.iter().map(|&p| if p { 1.0 } else { 0.0 }).collect();
    let flags = Tensor::from_slice(&flags).to_kind(local.kind()).view([-1, 1]);
    let mut flagged = Tensor::cat(&[local, flags], 1);
    let pad = shard as i64 - flagged.size()[0];
    if pad > 0 {
        flagged = Tensor::cat(&[flagged.shallow_clone(), Tensor::zeros([pad, flagged.size()[1]], (flagged.kind(), Device::Cpu))], 0);
    }
    let gathered = gather(pg, &flagged.to_device(device))?;
    pg.finish_pending()?;
    let gathered = gathered.to_device(Device::Cpu);
    let d = gathered.size()[1] - 1;
    let mut rows = Vec::with_capacity(n);
    for q in 0..w {
        let len = (((q + 1) * shard).min(n)).saturating_sub(q * shard) as i64;
        rows.push(gathered.narrow(0, (q * shard) as i64, len));
    }
    let all = Tensor::cat(&rows, 0);
    let present: Vec<bool> = Vec::<f64>::try_from(all.select(1, d).to_kind(Kind::Double))?.into_iter().map(|f| f > 0.5).collect();
    Ok(keep_present(&all.narrow(1, 0, d), &present))
}
