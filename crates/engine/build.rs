//! With the `cuda` feature, builds the engine's CUDA side (`src/kernels/cuda/`):
//!
//! - `kernels.cu` to PTX for the compute capability in `CUDA_COMPUTE_CAP` (as candle's own
//!   kernels are built), with the `nvcc` of `CUDA_HOME` or the `PATH`;
//! - `sdpa.cpp`, the shim over cuDNN's scaled-dot-product attention, with the host's C++
//!   compiler (it is C++ over cuDNN's frontend headers and launches nothing itself, so it
//!   needs no nvcc), against the headers in `CUDA_HOME/include` (where
//!   `tools/gpu/toolkit.sh` links cuDNN's and its frontend's), linked with cuDNN and the
//!   CUDA runtime that the frontend calls.
//!
//! Without the feature it does nothing, so a CPU build needs no CUDA toolkit.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/kernels/cuda/kernels.cu");
    println!("cargo::rerun-if-changed=src/kernels/cuda/sdpa.cpp");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    #[cfg(feature = "cuda")]
    {
        cuda::kernels();
        cuda::sdpa_shim();
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// `kernels.cu` to `OUT_DIR/kernels.ptx`.
    pub(crate) fn kernels() {
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
        let out =
            PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("src/kernels/cuda/kernels.cu")
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {} ({e}); install a CUDA toolkit (tools/gpu/toolkit.sh) and \
                     set CUDA_HOME",
                    nvcc.display()
                )
            });
        assert!(
            status.success(),
            "nvcc failed on src/kernels/cuda/kernels.cu"
        );
    }

    /// `sdpa.cpp` to a static library, and the shared libraries it calls into.
    pub(crate) fn sdpa_shim() {
        let home = env::var_os("CUDA_HOME").map(PathBuf::from);
        let include = home.as_ref().map(|h| h.join("include"));
        if let Some(dir) = &include {
            assert!(
                dir.join("cudnn_frontend.h").is_file(),
                "{} has no cudnn_frontend.h (cuDNN's frontend headers); tools/gpu/toolkit.sh \
                 installs them (the nvidia-cudnn-frontend wheel) and links them there",
                dir.display()
            );
        }
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .file("src/kernels/cuda/sdpa.cpp")
            .warnings(true)
            // The frontend's JSON support (serialising graphs) is unused here; without it the
            // shim compiles in about half the time.
            .define("CUDNN_FRONTEND_SKIP_JSON_LIB", None);
        if let Some(dir) = &include {
            // As a system directory: warnings in the frontend's headers are not ours to fix.
            build
                .flag("-isystem")
                .flag(dir.to_str().expect("CUDA_HOME is UTF-8"));
        }
        build.compile("sie_sdpa");
        if let Some(home) = &home {
            for lib in ["lib64", "lib"] {
                if home.join(lib).is_dir() {
                    println!(
                        "cargo::rustc-link-search=native={}",
                        home.join(lib).display()
                    );
                }
            }
        }
        // cuDNN, and the CUDA runtime, which the frontend calls itself (device properties,
        // workspace memsets, its autotuner's events).
        for lib in ["cudnn", "cudart"] {
            println!("cargo::rustc-link-lib=dylib={lib}");
        }
    }
}
