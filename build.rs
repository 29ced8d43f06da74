//! Embeds an rpath to libtorch so the binaries run without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked (the linker's --as-needed would drop it, hiding CUDA at run time).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run scripts/setup.sh once (it writes .cargo/config.toml)"
        );
        return;
    };
    println!("cargo:rustc-env=HIST_LIBTORCH_DIR={}", PathBuf::from(&libtorch).display());
    let lib_dir = PathBuf::from(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
