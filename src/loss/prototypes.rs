//! One learnable diagonal Gaussian per training class.
use tch::nn::{self, Init};
use tch::Tensor;

/// Kaiming-normal with fan-out, as the authors initialise both means and log-variances.
const KAIMING_NORMAL_FAN_OUT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// Means and raw log-variances [C, D] of the class distributions.
#[derive(Debug)]
pub struct Prototypes {
    /// Class means m_c (L2-normalised before use).
    pub means: Tensor,
    /// Raw log-variances v_c; the variance used is exp(relu6(v_c)).
    pub log_vars: Tensor,
}

impl Prototypes {
    /// Creates `means` and `log_vars` under `path` for `classes` × `dim`.
    pub fn new(path: &nn::Path, classes: i64, dim: i64) -> Self {
        let means = path.var("means", &[classes, dim], KAIMING_NORMAL_FAN_OUT);
        let log_vars = path.var("log_vars", &[classes, dim], KAIMING_NORMAL_FAN_OUT);
        Prototypes { means, log_vars }
    }
}
