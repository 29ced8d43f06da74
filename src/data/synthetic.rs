//! The built-in deterministic synthetic image dataset.
