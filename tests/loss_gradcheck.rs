//! Central finite differences against the analytic gradients of the HIST loss (f64).
use hist::loss::hgnn::HgnnWeights;
use hist::loss::{hist_loss, HistHyper, HistTensors};
use tch::{Device, Kind, Tensor};

const NAMES: [&str; 9] = ["embeddings", "means", "log_vars", "w1", "b1", "bn_weight", "bn_bias", "w2", "b2"];

fn inputs(n: i64, c: i64, d: i64, h: i64) -> (Vec<Tensor>, Tensor) {
    tch::manual_seed(7);
    let o = (Kind::Double, Device::Cpu);
    // log-variances kept away from relu6's kinks at 0 and 6, where the loss is not smooth.
    let log_vars = Tensor::rand([c, d], o) * 5.0 + 0.5;
    let t = vec![
        Tensor::randn([n, d], o) * 1.5,
        Tensor::randn([c, d], o),
        log_vars,
        Tensor::randn([h, d], o) * 0.3,
        Tensor::randn([h], o) * 0.1,
        Tensor::rand([h], o) + 0.5,
        Tensor::randn([h], o) * 0.1,
        Tensor::randn([c, h], o) * 0.3,
        Tensor::randn([c], o) * 0.1,
    ];
    let labels: Vec<i64> = (0..n).map(|i| (i * 3 / 2) % c).collect();
    (t.into_iter().map(|x| x.set_requires_grad(true)).collect(), Tensor::from_slice(&labels))
}

fn loss(t: &[Tensor], labels: &Tensor) -> Tensor {
    let hgnn = HgnnWeights { w1: &t[3], b1: &t[4], bn_weight: &t[5], bn_bias: &t[6], bn_running: None, w2: &t[7], b2: &t[8] };
    let tensors = HistTensors { means: &t[1], log_vars: &t[2], hgnn };
    hist_loss(&t[0], labels, tensors, HistHyper { tau: 8.0, alpha: 1.3, ls: 0.7 }).total
}

#[test]
fn analytic_gradients_match_central_differences() {
    let (t, labels) = inputs(10, 5, 6, 7);
    loss(&t, &labels).backward();
    let grads: Vec<Tensor> = t.iter().map(|x| x.grad().copy()).collect();
    let eps = 1e-6;
    let _guard = tch::no_grad_guard();
    for (k, name) in NAMES.iter().enumerate() {
        let numel = t[k].numel() as i64;
        for j in (0..numel).step_by(((numel / 7).max(1)) as usize) {
            let flat = t[k].view([-1]);
            let orig = flat.double_value(&[j]);
            let _ = flat.get(j).fill_(orig + eps);
            let up = loss(&t, &labels).double_value(&[]);
            let _ = flat.get(j).fill_(orig - eps);
            let down = loss(&t, &labels).double_value(&[]);
            let _ = flat.get(j).fill_(orig);
            let numeric = (up - down) / (2.0 * eps);
            let analytic = grads[k].view([-1]).double_value(&[j]);
            let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
            assert!(err < 1e-5, "{name}[{j}]: analytic {analytic:e}, numeric {numeric:e}, rel err {err:e}");
        }
    }
}
