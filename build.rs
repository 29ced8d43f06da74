//! Embeds an rpath to libtorch so the binaries run without LD_LIBRARY_PATH, keeps
//! libtorch_cuda linked (the linker's --as-needed would drop it, hiding CUDA at run time),
//! and compiles csrc/: the sync BatchNorm and HIST-distance autograd Functions and the
//! mixed-precision entry points (docs/architecture.md).
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
    let openmp = openmp_runtime(&lib_dir);
    match &openmp {
        Some(name) => {
            println!("cargo:rustc-link-search=native={}", lib_dir.display());
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
        None => println!(
            "cargo:warning=libtorch_cpu.so in {} names no libgomp beside it: the HIST loss's fused CPU loops (csrc/mahalanobis.cpp) will run on one thread",
            lib_dir.display()
        ),
    }
    compile_csrc(Path::new(&libtorch), openmp.is_some());
    compile_jpeg_region();
}

/// The OpenMP runtime libtorch's own parallel loops use: the libgomp that libtorch_cpu.so
/// names in its DT_NEEDED entries (the PyPI wheels ship libgomp.so.1, libtorch archives a
/// hashed libgomp-*.so.1), when that file is in libtorch's lib folder. Linked by that exact
/// name, so that csrc/'s at::parallel_for shares libtorch's threads and `set_num_threads`
/// instead of starting a second runtime. None for a libtorch built with another runtime.
fn openmp_runtime(lib_dir: &Path) -> Option<String> {
    let torch_cpu = lib_dir.join("libtorch_cpu.so");
    println!("cargo:rerun-if-changed={}", torch_cpu.display());
    let bytes = std::fs::read(&torch_cpu).ok()?;
    let elf = goblin::elf::Elf::parse(&bytes).ok()?;
    elf.libraries
        .iter()
        .find(|name| name.starts_with("libgomp") && lib_dir.join(name).is_file())
        .map(|name| name.to_string())
}

/// Builds csrc/*.cpp into one static library against libtorch's headers with the flags
/// torch-sys uses for its own wrapper (C++17, the C++11 ABI of the PyPI wheels); ~12 s of one
/// core per file.
fn compile_csrc(libtorch: &Path, openmp: bool) {
    const SOURCES: [&str; 4] = ["csrc/sync_batch_norm.cpp", "csrc/amp.cpp", "csrc/mahalanobis.cpp", "csrc/ffi_message.cpp"];
    for source in SOURCES.iter().chain(&["csrc/ffi_message.h"]) {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys's variable and default, so both halves agree on std::string's layout.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let include = libtorch.join("include");
    let mut build = cc::Build::new();
    // at::parallel_for is inline OpenMP in the PyPI builds: without -fopenmp it runs serially.
    if openmp {
        build.flag("-fopenmp");
    }
    build
        .cpp(true)
        .pic(true)
        // The loss's fused loops (csrc/mahalanobis.cpp) want the vectoriser whatever the
        // profile's opt-level.
        .opt_level(3)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // No fused multiply-adds the source does not write: the vector clones of
        // csrc/mahalanobis.cpp (with and without FMA) must round alike.
        .flag("-ffp-contract=off")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .files(SOURCES)
        .compile("hist_csrc");
}

/// The fast JPEG path (docs/setup.md): csrc/jpeg_region.c over the system libjpeg-turbo,
/// linked with -ljpeg and announced to the crate as `cfg(hist_libjpeg)`. Without the
/// library's headers, or with HIST_NO_LIBJPEG=1, the pipeline decodes JPEG with zune-jpeg.
fn compile_jpeg_region() {
    const SOURCE: &str = "csrc/jpeg_region.c";
    println!("cargo::rustc-check-cfg=cfg(hist_libjpeg)");
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=HIST_NO_LIBJPEG");
    if std::env::var("HIST_NO_LIBJPEG").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning=HIST_NO_LIBJPEG is set: the image pipeline decodes JPEG with zune-jpeg only (whole images, slower)");
        return;
    }
    // Compiling the shim is the test: it needs jpeglib.h of libjpeg-turbo 2.0 or newer.
    let built = cc::Build::new().opt_level(2).cargo_warnings(false).file(SOURCE).try_compile("hist_jpeg_region");
    if built.is_ok() {
        println!("cargo:rustc-link-lib=jpeg");
        println!("cargo:rustc-cfg=hist_libjpeg");
    } else {
        println!(
            "cargo:warning=libjpeg-turbo 2.0+ headers (jpeglib.h) not found: the image pipeline decodes JPEG with \
             zune-jpeg only (slower); for the fast path run `apt-get install libjpeg62-turbo-dev` (Ubuntu: \
             libjpeg-turbo8-dev), then `touch csrc/jpeg_region.c` and rebuild"
        );
    }
}
