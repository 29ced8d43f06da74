//! Retention: which checkpoints a save keeps, and the `best` link.
//!
//! The policy only decides (a pure function of steps and Recall@1s, easy to test and to
//! swap); the store does the removing. Removal is by rename-then-delete, so a crash during
//! retention never leaves a half-deleted folder under a checkpoint's name.
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use super::durable::{remove_dir_via_rename, remove_scratch, rename_synced, sync_dir};
use super::layout::{step_dir_name, step_dirs, temp_name, BEST_LINK};
use super::read::{verify_cheap, Problem};
use super::store::CheckpointStore;
use crate::error::Result;

/// A complete checkpoint as a retention policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeepCandidate {
    /// Its global step (newer is larger).
    pub step: usize,
    /// Recall@1 recorded in it, if any.
    pub recall_at_1: Option<f64>,
}

/// Decides which complete checkpoints survive a save.
pub trait KeepPolicy: fmt::Debug + Send + Sync {
    /// The steps to keep among `candidates` (complete checkpoints, newest first). The
    /// store keeps the checkpoint just saved whatever this returns.
    fn keep(&self, candidates: &[KeepCandidate]) -> BTreeSet<usize>;
}

/// Keep the newest `keep_last` checkpoints (at least one) and the best by Recall@1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepLastAndBest {
    /// How many of the newest to keep; 0 counts as 1.
    pub keep_last: usize,
}

impl KeepPolicy for KeepLastAndBest {
    fn keep(&self, candidates: &[KeepCandidate]) -> BTreeSet<usize> {
        let mut newest: Vec<usize> = candidates.iter().map(|c| c.step).collect();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep: BTreeSet<usize> = newest.into_iter().take(self.keep_last.max(1)).collect();
        keep.extend(best_step(candidates));
        keep
    }
}

/// The step of the candidate with the highest Recall@1; ties go to the newer one.
/// Candidates without a Recall@1, or with NaN, never win; `None` if none has one.
pub fn best_step(candidates: &[KeepCandidate]) -> Option<usize> {
    candidates
        .iter()
        .filter_map(|c| c.recall_at_1.filter(|r| !r.is_nan()).map(|r| (r, c.step)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, step)| step)
}

/// Checkpoint folders that are interrupted or corrupt, as (step, folder).
type Garbage = Vec<(usize, PathBuf)>;

impl CheckpointStore {
    /// The best complete checkpoint by Recall@1 (ties: the newer), also reachable as
    /// `checkpoints/best`; `None` if no complete checkpoint records a Recall@1. Uses the
    /// cheap checks (marker, metadata, file size); `load` verifies the checksum.
    pub fn best(&self) -> Result<Option<PathBuf>> {
        let candidates = self.candidates()?.0;
        Ok(best_step(&candidates).map(|step| self.root.join(step_dir_name(step))))
    }

    /// Complete checkpoints (passing the cheap checks) newest first, and folders that are
    /// certainly garbage (interrupted or corrupt; not merely unreadable just now).
    fn candidates(&self) -> Result<(Vec<KeepCandidate>, Garbage)> {
        let mut candidates = Vec::new();
        let mut garbage = Vec::new();
        for (step, dir) in step_dirs(&self.root)? {
            match verify_cheap(&dir) {
                Ok((meta, _)) => candidates.push(KeepCandidate {
                    step,
                    recall_at_1: meta.recall_at_1,
                }),
                Err(u) if u.problem == Problem::Unreadable => {}
                Err(_) => garbage.push((step, dir)),
            }
        }
        Ok((candidates, garbage))
    }

    /// Step 5 of a save: removes checkpoints the policy drops and garbage folders, then
    /// points `best` at the best survivor.
    pub(crate) fn apply_retention(&self, just_saved: usize) -> Result<()> {
        let (candidates, garbage) = self.candidates()?;
        let mut keep = self.policy.keep(&candidates);
        keep.insert(just_saved);
        for (step, dir) in garbage {
            if step != just_saved {
                remove_dir_via_rename(&self.root, &dir)?;
            }
        }
        for c in candidates.iter().filter(|c| !keep.contains(&c.step)) {
            remove_dir_via_rename(&self.root, &self.root.join(step_dir_name(c.step)))?;
        }
        let kept: Vec<KeepCandidate> = candidates
            .into_iter()
            .filter(|c| keep.contains(&c.step))
            .collect();
        self.point_best_at(best_step(&kept))
    }

    /// Makes `checkpoints/best` a relative symlink to `step` (replaced atomically by
    /// renaming a fresh link over it), or removes it when there is no best.
    fn point_best_at(&self, step: Option<usize>) -> Result<()> {
        let link = self.root.join(BEST_LINK);
        let Some(step) = step else {
            if std::fs::symlink_metadata(&link).is_ok() {
                remove_scratch(&link)?;
                sync_dir(&self.root)?;
            }
            return Ok(());
        };
        let target = step_dir_name(step);
        if std::fs::read_link(&link).is_ok_and(|t| t.as_os_str() == target.as_str()) {
            return Ok(());
        }
        let fresh = self.root.join(temp_name(BEST_LINK));
        std::os::unix::fs::symlink(&target, &fresh).map_err(|e| {
            super::durable::io_error(&fresh, &format!("create symlink to {target}"), e)
        })?;
        rename_synced(&fresh, &link, &self.root).inspect_err(|_| {
            let _ = remove_scratch(&fresh);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(step: usize, recall: Option<f64>) -> KeepCandidate {
        KeepCandidate {
            step,
            recall_at_1: recall,
        }
    }

    #[test]
    fn keeps_newest_and_best_with_ties_to_the_newer() {
        let cands = [
            c(6, Some(0.1)),
            c(5, Some(0.2)),
            c(4, Some(0.9)),
            c(3, Some(0.9)),
            c(2, None),
            c(1, Some(f64::NAN)),
        ];
        assert_eq!(best_step(&cands), Some(4));
        let keep = KeepLastAndBest { keep_last: 2 }.keep(&cands);
        assert_eq!(keep.into_iter().collect::<Vec<_>>(), vec![4, 5, 6]);
    }

    #[test]
    fn zero_keeps_one_and_no_recall_means_no_best() {
        let cands = [c(9, None), c(8, None)];
        assert_eq!(best_step(&cands), None);
        assert_eq!(
            KeepLastAndBest { keep_last: 0 }
                .keep(&cands)
                .into_iter()
                .collect::<Vec<_>>(),
            vec![9]
        );
    }
}
