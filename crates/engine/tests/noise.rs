//! `TorchGenerator` against torch itself, bit for bit (fixtures from
//! `tools/parity/make_noise_fixtures.py`).
//!
//! Each fixture file holds one seeded generator's sequence of `torch.randn` calls (`call_00`,
//! `call_01`, ... in call order, each with its call's shape); the Rust generator makes the
//! same calls in the same order, so a wrong draw count anywhere shows up in every later call.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use sie_engine::noise::{NormalKernel, TorchGenerator};

fn check(kernel: NormalKernel, prefix: &str, seed: u64) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/noise")
        .join(format!("{prefix}_seed_{seed}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut calls: Vec<(&String, &Tensor)> = tensors.iter().collect();
    calls.sort_by_key(|(name, _)| name.as_str());
    assert!(calls.len() >= 2, "{}: no calls recorded", path.display());

    let mut generator = TorchGenerator::with_kernel(seed, kernel);
    for (name, expected) in calls {
        let shape = expected.dims().to_vec();
        let expected: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
        let ours = generator.randn(expected.len());
        assert_eq!(
            ours.len(),
            expected.len(),
            "seed {seed} {name} shape {shape:?}"
        );
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{kernel:?} seed {seed}, {name} shape {shape:?}, element {i}: ours {a:e} \
                 ({:#010x}), torch {b:e} ({:#010x})",
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

#[test]
fn avx2_kernel_seed_0() {
    check(NormalKernel::Avx2, "avx2", 0);
}

#[test]
fn avx2_kernel_seed_42() {
    check(NormalKernel::Avx2, "avx2", 42);
}

#[test]
fn avx2_kernel_largest_seed() {
    check(NormalKernel::Avx2, "avx2", (1 << 63) - 1);
}

#[test]
fn new_is_the_avx2_kernel() {
    let mut a = TorchGenerator::new(42);
    let mut b = TorchGenerator::with_kernel(42, NormalKernel::Avx2);
    assert_eq!(a.randn(504), b.randn(504));
}

// The scalar kernel uses libm's logf/cosf/sinf, so it matches torch only where both reach the
// same libm; it was verified on x86-64 glibc.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn scalar_kernel_seed_42() {
    check(NormalKernel::Scalar, "scalar", 42);
}
