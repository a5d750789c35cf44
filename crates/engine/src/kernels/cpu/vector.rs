//! Element-wise loops compiled for the CPU's widest vector unit, and an `exp` they can use.
//!
//! The crate is built for baseline x86-64 (SSE2), where the compiler vectorises a plain loop
//! four floats at a time and calls libm for every `exp`. [`vectorised!`] compiles one loop
//! body three times, for AVX-512, for AVX2+FMA and for the baseline, and picks one at run
//! time from what the CPU reports, so the same binary runs everywhere and uses AVX-512 where
//! it exists. The bodies stay ordinary Rust written so the compiler can vectorise them
//! (straight-line arithmetic, fixed-width lanes for reductions); [`exp`] is such a body.

/// Defines a function whose body is compiled for AVX-512F, for AVX2+FMA and for the
/// baseline, and which runs the widest one the CPU supports (checked on each call; the
/// check is a cached load). The body must be safe code; arguments are plain parameters.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use vectorised;

/// `e^x` for f32 in straight-line arithmetic the compiler vectorises: `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, a degree-6 polynomial for `e^r` (Cephes' expf coefficients, within
/// 2 ulp of the true value), and `2^n` built in the exponent bits. Inputs below -87.3
/// (where `e^x` leaves the normal range) give about 1e-38 rather than 0, which vanishes in
/// every sum it meets; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.33, 88.37);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `x * sigmoid(x)`, diffusers' SiLU.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU in its exact form, `x/2 * (1 + erf(x/√2))`, as diffusers' GEGLU and CLIP use it.
/// `erfc(|z|)` comes from Abramowitz and Stegun's formula 7.1.26 (`t = 1/(1 + p|z|)`, a
/// degree-5 polynomial in `t` times `e^(-z²)`, within 1.5e-7 of the true value); for
/// negative inputs `1 + erf(z)` is that `erfc(|z|)` itself, so the far tail loses nothing
/// to cancellation.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erfc = poly * exp(-z * z);
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst: f32 = 0.0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs() as f32;
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON, "worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    vectorised! {
        fn exp_all(xs: &mut [f32]) {
            for x in xs {
                *x = exp(*x);
            }
        }
    }

    /// The dispatched copies compute what the scalar one does.
    #[test]
    fn vectorised_matches_scalar() {
        let mut xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.17).collect();
        let want: Vec<f32> = xs.iter().map(|&x| exp(x)).collect();
        exp_all(&mut xs);
        for (got, want) in xs.iter().zip(&want) {
            assert!(
                (got - want).abs() <= want * 2.0 * f32::EPSILON,
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_erf_matches_the_formula() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let z = x as f64 / std::f64::consts::SQRT_2;
            let want = 0.5 * x as f64 * (1.0 + candle_core::cpu::erf::erf_f64(z));
            let got = gelu_erf(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * (1.0 + x.abs() as f64),
                "gelu({x}) = {got}, want {want}"
            );
            x += 0.0093;
        }
    }

    #[test]
    fn silu_matches_the_formula() {
        for x in [-100.0f32, -5.0, -0.5, 0.0, 0.3, 4.0, 60.0] {
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!(
                ((silu(x) as f64) - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "{x}"
            );
        }
    }
}
