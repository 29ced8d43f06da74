//! The shipped recipes (configs/*.yaml) load and validate, and carry the authors' published
//! hyper-parameters (design §2's table, from github.com/ljin0429/HIST's README).
use std::path::Path;

use hist::config::{load_config, Backbone, BatchNormMode, Config, Sampling};

fn recipe(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(format!("{name}.yaml"));
    load_config(&path, &[]).unwrap_or_else(|e| panic!("configs/{name}.yaml: {e}"))
}

#[test]
fn every_shipped_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            load_config(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "demo + four recipes, found {seen}");
}

#[test]
fn recipes_carry_the_published_hyper_parameters() {
    // (name, tau, alpha, epochs, lr, lr_ds, hgnn factor, weight decay, decay step, BN)
    let table = [
        ("cub", 32.0, 1.1, 40, 1.2e-4, 1e-1, 5.0, 5e-5, 5, BatchNormMode::Frozen),
        ("cars", 32.0, 0.9, 50, 1e-4, 1e-1, 10.0, 1e-4, 10, BatchNormMode::Frozen),
        ("sop", 16.0, 2.0, 60, 1e-4, 1e-2, 10.0, 1e-4, 10, BatchNormMode::Sync),
    ];
    for (name, tau, alpha, epochs, lr, lr_ds, factor, wd, step, bn) in table {
        let c = recipe(name);
        let got = (c.loss.tau, c.loss.alpha, c.train.epochs, c.optim.lr, c.optim.lr_ds, c.optim.lr_hgnn_factor, c.optim.weight_decay, c.optim.lr_decay_step, c.model.bn);
        assert_eq!(got, (tau, alpha, epochs, lr, lr_ds, factor, wd, step, bn), "configs/{name}.yaml");
        assert_eq!((c.model.backbone, c.model.embedding_dim, c.loss.hgnn_hidden), (Backbone::Resnet50, 512, 512), "{name}");
        assert_eq!((c.optim.lr_decay_gamma, c.train.warmup_epochs, c.data.batch_size), (0.5, 1, 32), "{name}");
        assert_eq!(c.data.sampling, Sampling::Random, "{name}: the authors' --IPC 0 draws plain random batches");
    }
    let inshop = recipe("inshop");
    assert_eq!(inshop.model.backbone, Backbone::Resnet50);
}
