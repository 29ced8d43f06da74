//! TEMPORARY probe (to be deleted): difficulty numbers of the synthetic dataset.
use hist::config::{BatchNormMode, ModelConfig, SyntheticConfig};
use hist::data::synthetic::generate;
use hist::eval::{embed_all, recall_at_k};
use hist::model::EmbeddingModel;
use tch::{nn::VarStore, Device, Kind};

#[test]
fn probe() {
    let t = std::time::Instant::now();
    let s = generate(&SyntheticConfig::default(), 32, 0);
    eprintln!("generate default: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    for seed in 1..4 { let _ = generate(&SyntheticConfig::default(), 32, seed); }
    eprintln!("generate x3: {:?}", t.elapsed());
    {
        // contact sheet: 16 train classes x 8 images
        let (n, k) = (16usize, 8usize);
        let mut img = image::RgbImage::new((32 * k) as u32, (32 * n) as u32);
        let x = Vec::<u8>::try_from(s.train.images.flatten(0, -1)).unwrap();
        for c in 0..n { for i in 0..k { let b = (c * 40 + i) * 3 * 1024;
            for yy in 0..32 { for xx in 0..32 { let p = yy * 32 + xx;
                img.put_pixel((i * 32 + xx) as u32, (c * 32 + yy) as u32, image::Rgb([x[b + p], x[b + 1024 + p], x[b + 2048 + p]])); } } } }
        img.save("/tmp/probe/sheet.png").unwrap();
        eprintln!("{:?}", &s.train.class_names[..16]);
    }
    let raw = s.test.batch(&(0..s.test.len()).collect::<Vec<_>>(), &[], Kind::Float, Device::Cpu).view([s.test.len() as i64, -1]);
    eprintln!("raw pixels R@1,2,4,8: {:?}", recall_at_k(&raw, &s.test.labels, &[1, 2, 4, 8]));
    for seed in 0..3 {
        for bn in [BatchNormMode::Frozen, BatchNormMode::Local] {
            tch::manual_seed(seed);
            let vs = VarStore::new(Device::Cpu);
            let cfg = ModelConfig { bn, ..ModelConfig::default() };
            let m = EmbeddingModel::new(&vs.root(), &cfg);
            let e = embed_all(&m, &s.test, 256, Kind::Float, Device::Cpu);
            eprintln!("random CNN seed {seed} {bn:?} R@1,2,4,8: {:?}", recall_at_k(&e, &s.test.labels, &[1, 2, 4, 8]));
        }
    }
}
