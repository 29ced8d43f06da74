//! Worker sub-commands that are tools rather than training.
pub mod bench_checkpoint;
pub mod bench_collectives;
pub mod bench_decode;
pub mod bench_loss;
pub mod eval_checkpoint;
pub mod eval_embeddings;
pub mod inspect_loss;
pub mod nccl_check;
