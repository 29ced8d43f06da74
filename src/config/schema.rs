//! The configuration schema. Every struct rejects unknown keys; defaults are the
//! demo's small CPU run unless a comment says otherwise. docs/config.md lists every key.
use serde::{Deserialize, Serialize};

/// A whole run's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name: the run directory is `runs/<name>` unless `--run-dir` is given.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of every random stream (data, sampler, initialisation, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// Floating point type of parameters and activations.
    #[serde(default)]
    pub dtype: DType,
    /// Where tensors live: `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// CUDA only: convolutions may use TF32 tensor cores (PyTorch's default); false keeps
    /// them IEEE float32, e.g. to compare a GPU run with a CPU run.
    #[serde(default = "default_true")]
    pub tf32: bool,
    /// Data source, batch shape and sampling.
    pub data: DataConfig,
    /// Backbone and embedding head.
    #[serde(default)]
    pub model: ModelConfig,
    /// HIST loss hyper-parameters.
    #[serde(default)]
    pub loss: LossConfig,
    /// Optimiser, parameter groups and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Length of training.
    pub train: TrainConfig,
    /// Retrieval evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Multi-rank training.
    #[serde(default)]
    pub dist: DistConfig,
    /// Checkpoints for resuming.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

fn default_name() -> String {
    "run".to_string()
}
fn default_device() -> String {
    "cpu".to_string()
}

/// Floating point precision.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit floats (training).
    #[default]
    F32,
    /// 64-bit floats (tests and debugging).
    F64,
}

impl DType {
    /// The libtorch kind for this dtype.
    pub fn kind(self) -> tch::Kind {
        match self {
            DType::F32 => tch::Kind::Float,
            DType::F64 => tch::Kind::Double,
        }
    }
}

/// Where the images come from and how batches are drawn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic` (built in, no download), `folder` (one sub-folder per class), or a
    /// benchmark: `cub`, `cars`, `sop`, `inshop` (docs/datasets.md).
    #[serde(default)]
    pub source: DataSource,
    /// Root folder for `folder` and benchmark datasets.
    #[serde(default)]
    pub root: Option<String>,
    /// Global batch size (all ranks together).
    pub batch_size: usize,
    /// Images per class in a batch; must divide `batch_size` (used by `sampling: balanced`).
    pub ipc: usize,
    /// How batches are drawn: `balanced` (batch/ipc classes × ipc images) or `random`
    /// (a shuffled epoch cut into batches, as the authors' `--IPC 0`).
    #[serde(default)]
    pub sampling: Sampling,
    /// Side of the square synthetic images (and of `folder::load_folder`'s in-memory decode).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Random horizontal flips of training images.
    #[serde(default = "default_true")]
    pub hflip: bool,
    /// The built-in synthetic dataset.
    #[serde(default)]
    pub synthetic: SyntheticConfig,
    /// Splitting a `folder` dataset's classes into train and test.
    #[serde(default)]
    pub folder: FolderConfig,
    /// Side of the square training crop (RandomResizedCrop) of folder and benchmark images.
    #[serde(default = "default_train_crop")]
    pub train_crop: usize,
    /// RandomResizedCrop's range of the crop's area, as a fraction of the image's.
    #[serde(default = "default_crop_scale")]
    pub crop_scale: [f64; 2],
    /// RandomResizedCrop's range of the crop's aspect ratio (width / height).
    #[serde(default = "default_crop_ratio")]
    pub crop_ratio: [f64; 2],
    /// Test images: the shorter side is resized to this, then a centre crop of `test_crop`.
    #[serde(default = "default_test_resize")]
    pub test_resize: usize,
    /// Side of the square centre crop of test images.
    #[serde(default = "default_test_crop")]
    pub test_crop: usize,
    /// How pixels become the network's input: `auto` (from the backbone), `imagenet`, `bn_inception`.
    #[serde(default)]
    pub input_convention: InputConvention,
    /// A corrupt or missing image: `error` (stop, naming the file) or `skip` (leave it out, count it).
    #[serde(default)]
    pub on_bad_image: BadImagePolicy,
    /// Decode threads per rank; 0 = this machine's cores divided among its ranks.
    #[serde(default)]
    pub loader_threads: usize,
    /// Batches each rank's loader prepares ahead of the step.
    #[serde(default = "default_prefetch_batches")]
    pub prefetch_batches: usize,
}

fn default_train_crop() -> usize {
    224
}
fn default_crop_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_crop_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn default_test_resize() -> usize {
    256
}
fn default_test_crop() -> usize {
    224
}
fn default_prefetch_batches() -> usize {
    4
}

/// Pixel convention of the network's input (streamed images; synthetic data has its own).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputConvention {
    /// `bn_inception` for the BN-Inception backbone, `imagenet` for the others.
    #[default]
    Auto,
    /// RGB in [0, 1], minus ImageNet's mean, divided by its std (torchvision).
    Imagenet,
    /// BGR in [0, 255] minus [104, 117, 128], std 1 (pretrained-models' `bninception`).
    BnInception,
}

/// How training batches are drawn (data::sampler).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// batch_size / ipc distinct classes, ipc images each.
    #[default]
    Balanced,
    /// Each epoch a permutation of the training images, cut into batches (last partial dropped).
    Random,
}

/// What a corrupt or missing image does.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadImagePolicy {
    /// Stop with an error naming the file.
    #[default]
    Error,
    /// Leave the image out of its batch (or the evaluation) and count it in the epoch summary.
    Skip,
}

fn default_image_size() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// Dataset kinds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// Deterministic generated shapes/colours/textures (see `data::synthetic`).
    #[default]
    Synthetic,
    /// A user's folder with one sub-folder of JPEG/PNG images per class.
    Folder,
    /// CUB-200-2011 at `root` (docs/datasets.md): classes 1–100 train, 101–200 test.
    Cub,
    /// CARS-196 at `root`, from `cars_annos.txt`: classes 1–98 train, 99–196 test.
    Cars,
    /// Stanford Online Products at `root`: Ebay_train.txt train, Ebay_test.txt test.
    Sop,
    /// In-Shop Clothes at `root`: train rows train, query ∪ gallery rows test.
    Inshop,
}

/// Size of the built-in synthetic dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Classes seen in training.
    #[serde(default = "default_syn_train_classes")]
    pub train_classes: usize,
    /// Unseen classes used for retrieval evaluation (disjoint from training).
    #[serde(default = "default_syn_test_classes")]
    pub test_classes: usize,
    /// Images generated per class.
    #[serde(default = "default_syn_images")]
    pub images_per_class: usize,
}

fn default_syn_train_classes() -> usize {
    32
}
fn default_syn_test_classes() -> usize {
    32
}
fn default_syn_images() -> usize {
    40
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            train_classes: default_syn_train_classes(),
            test_classes: default_syn_test_classes(),
            images_per_class: default_syn_images(),
        }
    }
}

/// Class split of a folder dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// Fraction of the classes used for training; the rest are test classes.
    #[serde(default = "default_train_fraction")]
    pub train_fraction: f64,
    /// Seed of the class shuffle that makes the split.
    #[serde(default)]
    pub split_seed: u64,
}

fn default_train_fraction() -> f64 {
    0.5
}

impl Default for FolderConfig {
    fn default() -> Self {
        FolderConfig { train_fraction: default_train_fraction(), split_seed: 0 }
    }
}

/// Backbone and head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone architecture.
    #[serde(default)]
    pub backbone: Backbone,
    /// Channels of the first stage of `small_cnn` (doubling per stage).
    #[serde(default = "default_width")]
    pub width: i64,
    /// Embedding size D.
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: i64,
    /// BatchNorm2d of the backbone: `frozen` (eval mode, affine not trained), `local`
    /// (per-rank batch statistics) or `sync` (global-batch statistics, docs/config.md).
    #[serde(default)]
    pub bn: BatchNormMode,
    /// ImageNet weights for the backbone: a safetensors file with torchvision /
    /// pretrained-models names (docs/backbones.md); relative to the working directory.
    /// Loaded on a fresh run only; a resumed run takes the checkpoint's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// On CUDA: keep the backbone's convolution weights, and feed it its input, in the
    /// channels-last memory format (NHWC), which cuDNN's Tensor Core kernels prefer; the
    /// values are the same. Ignored on a CPU device (docs/config.md).
    #[serde(default)]
    pub channels_last: bool,
}

fn default_width() -> i64 {
    32
}
fn default_embedding_dim() -> i64 {
    64
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: Backbone::default(),
            width: default_width(),
            embedding_dim: default_embedding_dim(),
            bn: BatchNormMode::default(),
            pretrained: None,
            channels_last: false,
        }
    }
}

/// Backbone architectures.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// Four conv stages for small images on a CPU.
    #[default]
    SmallCnn,
    /// ResNet-50 in torchvision's layout (2048 features).
    Resnet50,
    /// BN-Inception in the pretrained-models layout (1024 features).
    BnInception,
}

/// How BatchNorm2d layers of the backbone behave in training.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// Eval mode (running statistics) and affine parameters not trained.
    #[default]
    Frozen,
    /// Batch statistics of this rank's batch; affine parameters trained.
    Local,
    /// Batch statistics of the global batch (exact SyncBatchNorm: statistics and gradient
    /// sums all-reduced across ranks); affine parameters trained.
    Sync,
}

/// HIST loss hyper-parameters (design §2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Temperature of the distribution loss softmax.
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Hardness of soft negative hyperedge membership exp(-alpha d).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weight of the HGNN cross-entropy.
    #[serde(default = "default_ls")]
    pub ls: f64,
    /// Hidden width of the two-layer HGNN.
    #[serde(default = "default_hgnn_hidden")]
    pub hgnn_hidden: i64,
}

fn default_tau() -> f64 {
    32.0
}
fn default_alpha() -> f64 {
    1.1
}
fn default_ls() -> f64 {
    1.0
}
fn default_hgnn_hidden() -> i64 {
    512
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            tau: default_tau(),
            alpha: default_alpha(),
            ls: default_ls(),
            hgnn_hidden: default_hgnn_hidden(),
        }
    }
}

/// Optimiser kinds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimName {
    /// Adam with L2 weight decay added to the gradient (torch.optim.Adam).
    #[default]
    Adam,
    /// Adam with decoupled weight decay (torch.optim.AdamW).
    Adamw,
    /// SGD with momentum (torch.optim.SGD).
    Sgd,
}

/// Optimiser, parameter groups and schedule (design §2, authors' recipe).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimiser.
    #[serde(default)]
    pub name: OptimName,
    /// Learning rate of the backbone trunk.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate of the embedding head (defaults to `lr`).
    #[serde(default)]
    pub lr_embedding: Option<f64>,
    /// Learning rate of the prototypes (means and log-variances).
    #[serde(default = "default_lr_ds")]
    pub lr_ds: f64,
    /// The HGNN learns at `lr * lr_hgnn_factor`.
    #[serde(default = "default_lr_hgnn_factor")]
    pub lr_hgnn_factor: f64,
    /// Weight decay of every group.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Adam's beta1 and beta2.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// StepLR: multiply every learning rate by `lr_decay_gamma` each `lr_decay_step` epochs.
    #[serde(default = "default_lr_decay_step")]
    pub lr_decay_step: usize,
    /// StepLR factor.
    #[serde(default = "default_lr_decay_gamma")]
    pub lr_decay_gamma: f64,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_lr_ds() -> f64 {
    1e-1
}
fn default_lr_hgnn_factor() -> f64 {
    5.0
}
fn default_weight_decay() -> f64 {
    5e-5
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_momentum() -> f64 {
    0.9
}
fn default_lr_decay_step() -> usize {
    5
}
fn default_lr_decay_gamma() -> f64 {
    0.5
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            name: OptimName::default(),
            lr: default_lr(),
            lr_embedding: None,
            lr_ds: default_lr_ds(),
            lr_hgnn_factor: default_lr_hgnn_factor(),
            weight_decay: default_weight_decay(),
            betas: default_betas(),
            eps: default_eps(),
            momentum: default_momentum(),
            lr_decay_step: default_lr_decay_step(),
            lr_decay_gamma: default_lr_decay_gamma(),
        }
    }
}

/// Length of training and logging cadence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of epochs (an epoch is len(train) // batch_size steps).
    pub epochs: usize,
    /// Stop after this many optimiser steps in total; 0 = no limit.
    #[serde(default)]
    pub max_steps: usize,
    /// Epochs at the start during which the backbone trunk is frozen.
    #[serde(default = "default_warmup_epochs")]
    pub warmup_epochs: usize,
    /// Log training scalars every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Print the step's losses to the terminal every this many steps (0 = only per epoch).
    #[serde(default)]
    pub print_every: usize,
    /// Evaluate before the first step too (the "initialisation" Recall@K).
    #[serde(default = "default_true")]
    pub eval_at_start: bool,
    /// On CUDA: the backbone and head forward under autocast (`bf16` or `fp16`; `fp16` with
    /// dynamic loss scaling); parameters, gradients, optimiser state and the loss stay
    /// float32. Needs `dtype: f32`; ignored on a CPU device (docs/config.md).
    #[serde(default)]
    pub autocast: AutocastMode,
}

/// Reduced-precision forward pass (`train.autocast`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutocastMode {
    /// Everything in `dtype`.
    #[default]
    Off,
    /// bfloat16 autocast: float32's range, no loss scaling needed.
    Bf16,
    /// float16 autocast with a dynamic loss scaler (torch.amp.GradScaler's rule).
    Fp16,
}

fn default_warmup_epochs() -> usize {
    1
}
fn default_log_every() -> usize {
    10
}

/// Retrieval evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The K of Recall@K.
    #[serde(default = "default_ks")]
    pub ks: Vec<usize>,
    /// Images embedded per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

fn default_ks() -> Vec<usize> {
    vec![1, 2, 4, 8]
}
fn default_eval_batch() -> usize {
    256
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { ks: default_ks(), batch_size: default_eval_batch() }
    }
}

/// Multi-rank training (the world itself comes from the launcher's environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// Size of the flat gradient buckets reduced in one collective, in MiB.
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Collectives backend: `auto` (none for one rank, else cpu or nccl by device),
    /// `cpu`, or `nccl` (also with one rank, to exercise NCCL on a single GPU).
    #[serde(default)]
    pub backend: DistBackend,
}

/// Which collectives backend a job uses.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// No backend for one rank; the CPU ring for CPU ranks; NCCL for CUDA ranks.
    #[default]
    Auto,
    /// The TCP ring (CPU tensors).
    Cpu,
    /// NCCL (CUDA tensors).
    Nccl,
}

impl DistBackend {
    /// Whether this backend can serve ranks on CUDA (`true`) or CPU (`false`) devices.
    pub fn serves(self, cuda: bool) -> bool {
        match self {
            DistBackend::Auto => true,
            DistBackend::Cpu => !cuda,
            DistBackend::Nccl => cuda,
        }
    }

    /// The config spelling: `auto`, `cpu` or `nccl`.
    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Auto => "auto",
            DistBackend::Cpu => "cpu",
            DistBackend::Nccl => "nccl",
        }
    }
}

fn default_bucket_mb() -> f64 {
    4.0
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { bucket_mb: default_bucket_mb(), backend: DistBackend::default() }
    }
}

/// When checkpoints are written and how many are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Also write one every this many optimiser steps (0 = only at epoch ends and on a stop signal).
    #[serde(default)]
    pub every_steps: usize,
    /// Keep the newest this many checkpoints (plus the best by Recall@1).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_keep() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every_steps: 0, keep: default_keep() }
    }
}
