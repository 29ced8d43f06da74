//! Worker threads that decode and transform the images of planned batches ahead of use.
//!
//! The loader walks a plan of batches (an iterator the caller builds from the sampler,
//! which is pure, so future steps are known). It keeps up to `prefetch` batches in flight:
//! every image of a submitted batch is a task on one crossbeam channel that all workers
//! take from, and each worker writes its image straight into the batch's slot of one
//! preallocated float tensor. The worker that finishes a batch's last image hands the
//! batch over; batches are returned strictly in plan order, so the output does not depend
//! on the number of threads or on which thread did what.
use std::collections::BTreeMap;
use std::path::Path;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use tch::{Device, Kind, Tensor};

use super::resample::Resampler;
use super::spec::{ImageOp, PipelineSpec};
use super::split::FileSet;
use crate::config::BadImagePolicy;
use crate::error::{HistError, Result};

/// One image of a planned batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageJob {
    /// Index of the image in its split.
    pub sample: usize,
    /// What to do to it.
    pub op: ImageOp,
}

/// One batch of a plan; `id` comes back with it (e.g. (epoch, step)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// The caller's name for the batch.
    pub id: (usize, usize),
    /// Its images, in output order; all with the same kind of op.
    pub jobs: Vec<ImageJob>,
}

/// An image left out of its batch under `data.on_bad_image: skip`.
#[derive(Debug)]
pub struct SkippedImage {
    /// Its place in the batch plan.
    pub slot: usize,
    /// Its index in the split.
    pub sample: usize,
    /// Why (names the file).
    pub error: HistError,
}

/// A batch as the loader hands it over.
#[derive(Debug)]
pub struct LoadedBatch {
    /// The plan's id of the batch.
    pub id: (usize, usize),
    /// f32 [n', 3, S, S] on the CPU: the planned images that could be read, in plan order.
    pub images: Tensor,
    /// `present[i]`: planned image i is in `images`.
    pub present: Vec<bool>,
    /// The planned images that are not, and why.
    pub skipped: Vec<SkippedImage>,
}

/// A batch being filled by the workers.
struct Assembly {
    seq: u64,
    id: (usize, usize),
    samples: Vec<usize>,
    /// Floats per image (3 · S · S).
    image_len: usize,
    /// The first float of `FillState::images`, as an address: the tensor owns the memory
    /// and lives as long as this assembly, and the slots workers write through it are disjoint.
    base: usize,
    state: Mutex<FillState>,
}

struct FillState {
    /// f32 [n, 3, S, S], contiguous, written slot by slot through `Assembly::base`.
    images: Tensor,
    errors: Vec<Option<HistError>>,
    remaining: usize,
}

struct Task {
    job: ImageJob,
    slot: usize,
    batch: Arc<Assembly>,
}

type Finished = (u64, Result<LoadedBatch>);

/// A pool of decode threads working through a plan of batches.
pub struct Loader {
    plan: Box<dyn Iterator<Item = BatchPlan>>,
    spec: Arc<PipelineSpec>,
    tasks: Option<Sender<Task>>,
    done: Receiver<Finished>,
    ready: BTreeMap<u64, Result<LoadedBatch>>,
    submitted: u64,
    returned: u64,
    closing: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

fn lock(state: &Mutex<FillState>) -> MutexGuard<'_, FillState> {
    // A worker never panics while holding the lock (decoding happens outside it).
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Loader {
    /// Starts `spec.threads` workers on `files` for the batches of `plan`.
    pub fn new(files: Arc<FileSet>, spec: Arc<PipelineSpec>, plan: Box<dyn Iterator<Item = BatchPlan>>) -> Result<Loader> {
        let (task_tx, task_rx) = unbounded::<Task>();
        let (done_tx, done_rx) = unbounded::<Finished>();
        let closing = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(spec.threads);
        for i in 0..spec.threads.max(1) {
            let (tasks, done, files, spec, closing) =
                (task_rx.clone(), done_tx.clone(), Arc::clone(&files), Arc::clone(&spec), Arc::clone(&closing));
            let handle = std::thread::Builder::new()
                .name(format!("hist-decode-{i}"))
                .spawn(move || work(&tasks, &done, &files, &spec, &closing))
                .map_err(|e| HistError::Data { path: "image pipeline".into(), message: format!("cannot start a decode thread: {e}; lower data.loader_threads") })?;
            workers.push(handle);
        }
        Ok(Loader {
            plan,
            spec,
            tasks: Some(task_tx),
            done: done_rx,
            ready: BTreeMap::new(),
            submitted: 0,
            returned: 0,
            closing,
            workers,
        })
    }

    /// The next batch of the plan (waiting for it if needed); `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<LoadedBatch>> {
        self.top_up();
        if self.returned == self.submitted {
            return None;
        }
        loop {
            if let Some(batch) = self.ready.remove(&self.returned) {
                self.returned += 1;
                self.top_up();
                return Some(batch);
            }
            match self.done.recv() {
                Ok((seq, batch)) => {
                    self.ready.insert(seq, batch);
                }
                Err(_) => {
                    let message = "every decode thread has stopped; see the messages above".to_string();
                    return Some(Err(HistError::Data { path: "image pipeline".into(), message }));
                }
            }
        }
    }

    /// Submits planned batches until `prefetch` are in flight or the plan ends.
    fn top_up(&mut self) {
        while self.submitted - self.returned < self.spec.prefetch as u64 {
            let Some(planned) = self.plan.next() else { return };
            self.submit(planned);
        }
    }

    fn submit(&mut self, planned: BatchPlan) {
        let seq = self.submitted;
        self.submitted += 1;
        let side = planned.jobs.first().map_or(self.spec.test_crop, |j| self.spec.output_side(&j.op)) as i64;
        let n = planned.jobs.len();
        let images = Tensor::empty([n as i64, 3, side, side], (Kind::Float, Device::Cpu));
        if n == 0 {
            let batch = LoadedBatch { id: planned.id, images, present: Vec::new(), skipped: Vec::new() };
            self.ready.insert(seq, Ok(batch));
            return;
        }
        let base = images.data_ptr() as usize;
        let batch = Arc::new(Assembly {
            seq,
            id: planned.id,
            samples: planned.jobs.iter().map(|j| j.sample).collect(),
            image_len: (3 * side * side) as usize,
            base,
            state: Mutex::new(FillState { images, errors: (0..n).map(|_| None).collect(), remaining: n }),
        });
        if let Some(tasks) = &self.tasks {
            for (slot, job) in planned.jobs.into_iter().enumerate() {
                // Sending fails only when every worker is gone; next_batch reports that.
                let _ = tasks.send(Task { job, slot, batch: Arc::clone(&batch) });
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Queued tasks are skipped, not decoded: a stopped run should not wait for them.
        self.closing.store(true, Ordering::Relaxed);
        self.tasks = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker's loop: decode, resample and normalise one image per task.
fn work(tasks: &Receiver<Task>, done: &Sender<Finished>, files: &FileSet, spec: &PipelineSpec, closing: &AtomicBool) {
    let mut resampler = Resampler::new();
    for task in tasks.iter() {
        if closing.load(Ordering::Relaxed) {
            continue;
        }
        let batch = &task.batch;
        let path = &files.paths[task.job.sample];
        // Whatever happens to this image, its batch must complete, or the trainer would wait forever.
        let outcome = catch_unwind(AssertUnwindSafe(|| prepare(&task, path, spec, &mut resampler))).unwrap_or_else(|_| {
            let message = "the image pipeline failed on this file; this is a bug, please report it".to_string();
            Err(HistError::Data { path: path.clone(), message })
        });
        let mut state = lock(&batch.state);
        if let Err(e) = outcome {
            state.errors[task.slot] = Some(e);
        }
        state.remaining -= 1;
        if state.remaining == 0 {
            let (images, errors) = (state.images.shallow_clone(), std::mem::take(&mut state.errors));
            drop(state);
            // As for each image: a failure here (libtorch out of memory) must still reach
            // the trainer as this batch's error.
            let finished = catch_unwind(AssertUnwindSafe(|| finish(batch, images, errors, spec.on_bad_image))).unwrap_or_else(|_| {
                let message = format!("assembling batch {:?} failed (out of memory?)", batch.id);
                Err(HistError::Data { path: "image pipeline".into(), message })
            });
            let _ = done.send((batch.seq, finished));
        }
    }
}

/// Decodes, resamples and normalises one task's image into its slot of the batch.
fn prepare(task: &Task, path: &Path, spec: &PipelineSpec, resampler: &mut Resampler) -> Result<()> {
    let (resized, region, flip) = spec.decode_resample(path, &task.job.op, resampler)?;
    let batch = &task.batch;
    // SAFETY: `base` points at the contiguous f32 storage of the batch's images, which
    // `batch` (held by this task) keeps alive; slot `task.slot` of `image_len` floats lies
    // inside it (slot < n) and no other task writes it. The finishing worker reads the
    // slots only after every writer has passed the batch's mutex.
    let out = unsafe { std::slice::from_raw_parts_mut((batch.base as *mut f32).add(task.slot * batch.image_len), batch.image_len) };
    spec.normalizer.write_chw(&resized, region, flip, out);
    Ok(())
}

/// The finished batch: an error under `error` if any image failed (the first in plan
/// order, so the same whatever the threads did), else the images that were read.
fn finish(batch: &Assembly, images: Tensor, errors: Vec<Option<HistError>>, policy: BadImagePolicy) -> Result<LoadedBatch> {
    let present: Vec<bool> = errors.iter().map(Option::is_none).collect();
    let mut skipped = Vec::new();
    for (slot, error) in errors.into_iter().enumerate() {
        if let Some(error) = error {
            if policy == BadImagePolicy::Error {
                return Err(error);
            }
            skipped.push(SkippedImage { slot, sample: batch.samples[slot], error });
        }
    }
    let images = if skipped.is_empty() {
        images
    } else {
        let rows: Vec<i64> = (0..present.len() as i64).filter(|&i| present[i as usize]).collect();
        images.f_index_select(0, &Tensor::from_slice(&rows))?
    };
    Ok(LoadedBatch { id: batch.id, images, present, skipped })
}
