//! Optimisers (Adam, AdamW, SGD) matching torch.optim, with exportable state.
