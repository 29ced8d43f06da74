//! A dataset's test split embedded by a model, with the retrieval protocol it is scored
//! under (same-source, or In-Shop's query vs gallery): what the trainer's evaluation and
//! `hist eval --checkpoint` share, so both score a model identically.
use std::collections::HashSet;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::data::pipeline::{Dataset, PipelineSpec};
use crate::dist::Collectives;
use crate::error::Result;
use crate::eval::embed::embed_sharded;
use crate::eval::protocol::Split;
use crate::model::EmbeddingModel;

/// The embedded test split.
#[derive(Debug)]
pub struct EmbeddedTest {
    /// [n, D] on the CPU, one row per readable test image (every rank holds all of them).
    pub embeddings: Tensor,
    /// Their labels.
    pub labels: Vec<i64>,
    /// Their indices in the test split, ascending.
    pub kept: Vec<usize>,
    /// Test images left out as unreadable (`data.on_bad_image: skip`).
    pub skipped: Vec<usize>,
    /// Queries and gallery among the kept rows.
    pub split: Split,
}

/// Embeds `data.test` sharded over the ranks of `pg` and restricts the dataset's
/// query/gallery masks (if any) to the readable images.
pub fn embed_test_split(
    pg: &mut dyn Collectives,
    model: &EmbeddingModel,
    data: &Dataset,
    spec: &Arc<PipelineSpec>,
    batch: usize,
    kind: Kind,
    device: Device,
) -> Result<EmbeddedTest> {
    let emb = embed_sharded(pg, model, &data.test, spec, batch, kind, device)?;
    let labels = data.test.labels_of(&emb.kept);
    let split = match &data.query_gallery {
        None => Split::same_source(labels.len()),
        Some(qg) => {
            let query: Vec<bool> = emb.kept.iter().map(|&i| qg.query[i]).collect();
            let gallery: Vec<bool> = emb.kept.iter().map(|&i| qg.gallery[i]).collect();
            Split::from_masks(labels.len(), Some(&query), Some(&gallery))?
        }
    };
    let kept: HashSet<usize> = emb.kept.iter().copied().collect();
    let skipped = (0..data.test.len()).filter(|i| !kept.contains(i)).collect();
    Ok(EmbeddedTest { embeddings: emb.embeddings, labels, kept: emb.kept, skipped, split })
}
