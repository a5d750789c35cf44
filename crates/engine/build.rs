//! With the `cuda` feature, compiles our CUDA kernels (`src/kernels/cuda/kernels.cu`) to
//! PTX for the compute capability in `CUDA_COMPUTE_CAP` (as candle's own kernels are built),
//! with the `nvcc` of `CUDA_HOME` or the `PATH`. Without the feature it does nothing, so a
//! CPU build needs no CUDA toolkit.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/kernels/cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| {
        panic!(
            "the cuda feature needs CUDA_COMPUTE_CAP, the GPU's compute capability (90 for \
             H100/H200, 89 for L4, 86 for A10, 80 for A100); tools/gpu/build.sh sets it"
        )
    });
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin/nvcc"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/kernels/cuda/kernels.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {} ({e}); install a CUDA toolkit (tools/gpu/toolkit.sh) and set \
                 CUDA_HOME",
                nvcc.display()
            )
        });
    assert!(
        status.success(),
        "nvcc failed on src/kernels/cuda/kernels.cu"
    );
}
