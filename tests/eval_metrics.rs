//! Holds `hist eval --embeddings` (Recall@K, MAP@R, R-Precision, NMI) to an independent
//! reference, tests/reference/metrics_ref.py, and checks that bad inputs fail with one
//! line naming the tensor or flag (exit status 2).
//!
//! The reference generates the cases (random, clustered, well separated, exact ties from
//! duplicated rows and from ±1/8 sign vectors, singleton classes, disjoint and
//! overlapping query/gallery masks, cosines 1e-8 to 1e-11 apart that float32 products
//! cannot order), then scores them three ways: numpy brute force,
//! pytorch-metric-learning's AccuracyCalculator, and scikit-learn's NMI of our own
//! k-means clusters (k-means differs between implementations, so the clustering is ours
//! and only the NMI formula is checked against scikit-learn).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hist::eval::knn::{for_each_target_ranks, knn, normalize_rows, KnnOptions, Precision};
use hist::tools::eval_embeddings::{evaluate_file, load, EvalArgs};
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

/// Every case of metrics_ref.py and the --chunk it runs with (None: the default), so
/// chunk boundaries fall at odd places, including one query per chunk.
const CASES: [(&str, Option<usize>); 10] = [
    ("random", None), ("clustered", Some(7)), ("separated", None), ("duplicates", Some(13)),
    ("signs", Some(1)), ("singletons", None), ("query_gallery", Some(5)), ("overlap", Some(3)),
    ("near_ties", Some(11)), ("near_ties_f32", None),
];
/// Cases whose near-ties float32 products cannot order (cosines 1e-8 to 1e-11 apart).
const NEAR_TIE_CASES: [&str; 2] = ["near_ties", "near_ties_f32"];
/// The K of Recall@K, as metrics_ref.py's KS; 1000 exceeds every gallery (clamped).
const KS: [usize; 6] = [1, 2, 4, 8, 16, 1000];
/// Agreement required with every reference.
const TOL: f64 = 1e-6;

fn python() -> String {
    // A missing interpreter must fail loudly: skipping would hide wrong metrics.
    std::env::var("HIST_PYTHON").unwrap_or_else(|_| {
        panic!("HIST_PYTHON is not set; run scripts/setup.sh to create the Python venv and .cargo/config.toml")
    })
}

fn reference(args: &[&str]) -> Output {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/metrics_ref.py");
    let output = Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {python} (re-run scripts/setup.sh?): {e}"));
    assert!(output.status.success(), "metrics_ref.py {args:?} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    output
}

fn hist(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hist")).args(args).output().expect("run the hist binary")
}

fn eval_args(file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["eval", "--embeddings"].iter().map(|s| s.to_string()).collect();
    args.push(file.to_str().expect("utf-8 temp path").to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `hist eval --json --ks KS` on a case; returns the printed object.
fn cli_json(file: &Path, chunk: Option<usize>) -> Map<String, Value> {
    let ks = KS.map(|k| k.to_string()).join(",");
    cli_json_with(file, chunk, &["--ks", &ks, "--kmeans-restarts", "3", "--kmeans-iters", "50", "--seed", "0"])
}

fn cli_json_with(file: &Path, chunk: Option<usize>, flags: &[&str]) -> Map<String, Value> {
    let chunk = chunk.map(|c| c.to_string());
    let mut extra = vec!["--json"];
    extra.extend(flags);
    if let Some(c) = &chunk {
        extra.extend(["--chunk", c]);
    }
    let out = hist(&eval_args(file, &extra));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hist eval {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "--json must print one line:\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not a JSON object ({e}):\n{stdout}"))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

#[test]
fn metrics_match_the_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path");
    reference(&["gen", dir_str]);

    let mut ours: HashMap<&str, (Map<String, Value>, usize)> = HashMap::new();
    // Small K only: the search then stops at depth max(K, R) below the gallery size, so
    // groups of equal similarities straddle the cut (the boundary tie-breaking path).
    let mut shallow: HashMap<&str, Map<String, Value>> = HashMap::new();
    for (name, chunk) in CASES {
        let file: PathBuf = dir.path().join(format!("{name}.safetensors"));
        let json = cli_json(&file, chunk);
        // The library with the CLI's options: same numbers, plus the clustering for NMI.
        let args = EvalArgs { ks: KS.to_vec(), json: true, chunk, precision: "f32".into(), device: "cpu".into(), kmeans_restarts: 3, kmeans_iters: 50, seed: 0, report_file: None };
        let report = evaluate_file(&file, &args).expect("library evaluation");
        for (key, value) in report.metrics() {
            let printed = json.get(&key).map(|v| num(v, &key)).unwrap_or_else(|| panic!("{name}: --json lacks {key}"));
            // serde_json's default float parsing may be off by an ulp, hence not equality.
            assert!((printed - value).abs() < 1e-12, "{name}: {key} printed {printed} but the library has {value}");
            assert!((0.0..=1.0).contains(&value), "{name}: {key} = {value} outside [0, 1]");
        }
        assert_eq!(json.len(), KS.len() + 3, "{name}: unexpected keys in {json:?}");
        let clusters = report.clustering.as_ref().expect("NMI was requested").assignments.clone();
        let clusters_file = dir.path().join(format!("{name}.clusters.safetensors"));
        Tensor::write_safetensors(&[("clusters", Tensor::from_slice(&clusters))], &clusters_file).expect("write clusters");
        ours.insert(name, (json, report.retrieval.lone_queries));
        shallow.insert(name, cli_json_with(&file, chunk.map(|c| c + 1), &["--ks", "1,2,4", "--kmeans-restarts", "0"]));
    }

    let out = reference(&["check", dir_str]);
    let refs: Map<String, Value> = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let mut failures = Vec::new();
    let mut close = |case: &str, what: &str, mine: f64, theirs: f64| {
        if (mine - theirs).abs() > TOL {
            failures.push(format!("{case}: {what}: ours {mine} vs reference {theirs}"));
        }
    };
    for (name, _) in CASES {
        let (json, lone) = &ours[name];
        let r = &refs[name];
        let mine = |key: &str| num(&json[key], key);
        for k in KS {
            let key = format!("recall@{k}");
            close(name, &format!("numpy {key}"), mine(&key), num(&r["numpy"][&key], &key));
        }
        for key in ["map@r", "r_precision"] {
            close(name, &format!("numpy {key}"), mine(key), num(&r["numpy"][key], key));
        }
        assert_eq!(*lone as f64, num(&r["numpy"]["lone"], "lone"), "{name}: queries left out (R = 0)");
        for pml in ["pml", "pml_faiss"] {
            if r[pml].is_null() {
                continue;
            }
            close(name, &format!("{pml} precision_at_1"), mine("recall@1"), num(&r[pml]["precision_at_1"], "p@1"));
            close(name, &format!("{pml} r_precision"), mine("r_precision"), num(&r[pml]["r_precision"], "rp"));
            close(name, &format!("{pml} mean_average_precision_at_r"), mine("map@r"), num(&r[pml]["mean_average_precision_at_r"], "map"));
        }
        close(name, "nmi (sklearn on our clusters)", mine("nmi"), num(&r["nmi_sklearn"], "nmi"));
        for key in ["recall@1", "recall@2", "recall@4", "map@r", "r_precision"] {
            close(name, &format!("numpy {key}, search depth max(4, R)"), num(&shallow[name][key], key), num(&r["numpy"][key], key));
        }
    }
    assert!(failures.is_empty(), "disagreements with the reference:\n{}", failures.join("\n"));
    // Well-separated blobs: k-means must find the classes, and retrieval is perfect.
    let sep = &ours["separated"].0;
    assert!(num(&sep["nmi"], "nmi") > 0.99, "k-means missed well-separated classes: {sep:?}");
    assert_eq!(num(&sep["map@r"], "map@r"), 1.0);
    // The cases are not degenerate: ties and chunking matter only if metrics are mid-range.
    for name in ["clustered", "duplicates", "signs", "query_gallery", "near_ties", "near_ties_f32"] {
        let v = num(&ours[name].0["map@r"], "map@r");
        assert!(v > 0.01 && v < 0.99, "{name}: MAP@R {v} too close to 0 or 1 to test anything");
    }
}

fn int_rows(t: &Tensor) -> Vec<Vec<i64>> {
    (0..t.size()[0]).map(|i| Vec::<i64>::try_from(t.get(i)).expect("int64 row")).collect()
}

// Reference (metrics_ref.py `neighbours`, numpy): per query, gallery positions other than
// its own row, float64 cosine of the normalised distinct rows, order
// np.lexsort((position, -similarity)), the first min(20, G), −1 padded.
#[test]
fn neighbour_lists_match_the_float64_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path");
    reference(&["gen", dir_str]);
    reference(&["neighbours", dir_str]);
    for (name, _) in CASES {
        let input = load(&dir.path().join(format!("{name}.safetensors"))).expect("case file");
        let split = &input.split;
        let pick = |r: &[i64]| input.embeddings.index_select(0, &Tensor::from_slice(r));
        let (queries, gallery) = (pick(&split.query_rows), pick(&split.gallery_rows));
        let file = dir.path().join(format!("{name}.neighbours.safetensors"));
        let want = int_rows(&Tensor::read_safetensors(&file).expect("reference lists")[0].1);
        let k = want[0].len();
        let own = Some(split.self_positions.as_slice());
        for precision in [Precision::F32, Precision::F64] {
            for chunk in [None, Some(7)] {
                let options = KnnOptions { chunk, precision };
                let got = knn(&queries, &gallery, own, k, &options).expect("knn");
                assert_eq!(int_rows(&got.indices), want, "{name}: {options:?}");
                // The metrics' search: ranks of the same-label entries in the same order,
                // over the full grid and, where the queries are the gallery, over the
                // symmetric half (the same tensor twice).
                let labels_of = |rows: &[i64]| -> Vec<i64> { rows.iter().map(|&r| input.labels[r as usize]).collect() };
                let (query_labels, gallery_labels) = (labels_of(&split.query_rows), labels_of(&split.gallery_rows));
                let mut galleries = vec![("grid", &gallery)];
                if split.is_same_source() {
                    galleries.push(("symmetric", &queries));
                }
                for (how, g) in galleries {
                    for_each_target_ranks(&queries, g, own, &query_labels, &gallery_labels, k, &options, |q, ranks| {
                        let expected: Vec<usize> = (0..k).filter(|&r| want[q][r] >= 0 && gallery_labels[want[q][r] as usize] == query_labels[q]).collect();
                        assert_eq!(ranks, expected.as_slice(), "{name} ({how}): query {q}, {options:?}");
                        Ok(())
                    })
                    .expect("target ranks");
                }
            }
        }
        if NEAR_TIE_CASES.contains(&name) {
            // The case is sharp: ordering by the float32 products alone gets it wrong.
            let products = normalize_rows(&queries, Kind::Float).mm(&normalize_rows(&gallery, Kind::Float).tr());
            for (q, &p) in split.self_positions.iter().enumerate() {
                let _ = products.get(q as i64).get(p).fill_(f64::NEG_INFINITY);
            }
            let order = products.sort_stable(true, 1, true).1.narrow(1, 0, k as i64);
            assert_ne!(int_rows(&order), want, "{name}: float32 products already order it; the case tests nothing");
        }
    }
}

/// Writes `tensors` as a safetensors file in `dir`.
fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    Tensor::write_safetensors(tensors, &path).expect("write test input");
    path
}

/// Runs `hist eval` and checks: status 2, nothing on stdout, one stderr line with `needle`.
fn expect_error(args: &[String], needle: &str) {
    let out = hist(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: expected exit 2, got {:?}; stderr:\n{stderr}", out.status);
    assert!(out.stdout.is_empty(), "{args:?}: printed {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: error not on one line:\n{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{args:?}: expected {needle:?} in: {stderr}");
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_tensor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let emb = || Tensor::randn([6, 3], (Kind::Float, tch::Device::Cpu));
    let labels = || Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2]);
    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").expect("write");
    let nan = emb().index_fill(0, &Tensor::from_slice(&[2i64]), f64::NAN);
    let files: Vec<(PathBuf, &str)> = vec![
        (garbage, "cannot read as safetensors"),
        (d.join("missing.safetensors"), "missing.safetensors"),
        (write(d, "no_labels", &[("embeddings", emb())]), "labels"),
        (write(d, "no_embeddings", &[("labels", labels())]), "embeddings"),
        (write(d, "int_embeddings", &[("embeddings", emb().to_kind(Kind::Int64)), ("labels", labels())]), "embeddings"),
        (write(d, "flat_embeddings", &[("embeddings", Tensor::zeros([6], (Kind::Float, tch::Device::Cpu))), ("labels", labels())]), "embeddings"),
        (write(d, "count_mismatch", &[("embeddings", emb()), ("labels", Tensor::from_slice(&[0i64, 0, 1, 1, 2]))]), "labels"),
        (write(d, "int32_labels", &[("embeddings", emb()), ("labels", labels().to_kind(Kind::Int))]), "labels"),
        (write(d, "short_mask", &[("embeddings", emb()), ("labels", labels()), ("is_query", Tensor::from_slice(&[true, false]))]), "is_query"),
        (write(d, "float_mask", &[("embeddings", emb()), ("labels", labels()), ("is_gallery", Tensor::ones([6], (Kind::Float, tch::Device::Cpu)))]), "is_gallery"),
        (write(d, "mask_value_2", &[("embeddings", emb()), ("labels", labels()), ("is_query", Tensor::from_slice(&[1u8, 2, 0, 0, 1, 1]))]), "is_query"),
        (write(d, "empty_gallery", &[("embeddings", emb()), ("labels", labels()), ("is_gallery", Tensor::from_slice(&[false; 6]))]), "is_gallery"),
        (write(d, "typo", &[("embeddings", emb()), ("labels", labels()), ("is_queries", Tensor::from_slice(&[true; 6]))]), "is_queries"),
        (write(d, "nan", &[("embeddings", nan), ("labels", labels())]), "embeddings"),
        (write(d, "all_singletons", &[("embeddings", emb()), ("labels", Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)))]), "labels"),
    ];
    for (file, needle) in &files {
        expect_error(&eval_args(file, &["--json"]), needle);
    }
    let good = write(d, "good", &[("embeddings", emb()), ("labels", labels())]);
    expect_error(&eval_args(&good, &["--ks", "0,4"]), "--ks");
    expect_error(&eval_args(&good, &["--chunk", "0"]), "--chunk");
    expect_error(&eval_args(&good, &["--precision", "f16"]), "--precision");
    expect_error(&eval_args(&good, &["--device", "cuda:99"]), "--device");
    expect_error(&eval_args(&good, &["--device", "tpu"]), "--device");
}

#[test]
fn table_output_and_skipping_nmi() {
    let dir = tempfile::tempdir().expect("temp dir");
    let e = Tensor::from_slice(&[1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9, 0.7, 0.7]).view([5, 2]);
    let file = write(dir.path(), "small", &[("embeddings", e), ("labels", Tensor::from_slice(&[0i64, 0, 1, 1, 2]))]);
    let out = hist(&eval_args(&file, &["--ks", "2,1"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let first: Vec<&str> = table.lines().take(6).map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(first, ["metric", "recall@1", "recall@2", "map@r", "r_precision", "nmi"], "{table}");
    assert!(table.contains("recall@1     1.0000"), "{table}");
    assert!(table.contains("1 with no other row of their label"), "{table}");
    let json = cli_json_plain(&file, &["--json", "--kmeans-restarts", "0"]);
    assert!(!json.contains_key("nmi") && json.contains_key("map@r"), "{json:?}");
}

fn cli_json_plain(file: &Path, extra: &[&str]) -> Map<String, Value> {
    let out = hist(&eval_args(file, extra));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}
