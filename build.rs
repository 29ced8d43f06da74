//! Embeds an rpath to libtorch so the binaries run without LD_LIBRARY_PATH, keeps
//! libtorch_cuda linked (the linker's --as-needed would drop it, hiding CUDA at run time),
//! and compiles the sync BatchNorm autograd Function (csrc/, docs/architecture.md).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        panic!(
            "LIBTORCH is not set: run scripts/setup.sh once (it writes .cargo/config.toml); \
             the build needs libtorch's headers and libraries"
        );
    };
    println!("cargo:rustc-env=HIST_LIBTORCH_DIR={}", PathBuf::from(&libtorch).display());
    let lib_dir = PathBuf::from(&libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    compile_sync_batch_norm(Path::new(&libtorch));
}

/// Builds csrc/sync_batch_norm.cpp against libtorch's headers with the flags torch-sys uses
/// for its own wrapper (C++17, the C++11 ABI of the PyPI wheels); ~12 s on one core.
fn compile_sync_batch_norm(libtorch: &Path) {
    const SOURCE: &str = "csrc/sync_batch_norm.cpp";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys's variable and default, so both halves agree on std::string's layout.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let include = libtorch.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .file(SOURCE)
        .compile("hist_sync_bn");
}
