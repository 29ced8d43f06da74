//! NCCL collectives on CUDA tensors, with libnccl loaded at run time.
