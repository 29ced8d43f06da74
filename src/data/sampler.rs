//! Class-balanced batch sampler.
