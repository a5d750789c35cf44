//! Random weights for our own networks: the one builder behind the tiny-model writer
//! (`tiny.rs`) and the benchmarks (`bench.rs`), the two places that need a network without
//! a checkpoint.
//!
//! A network is built on a `VarBuilder` whose backend, [`RandomWeights`], makes up each
//! weight when the network asks for it and notes its name and shape. So the weights are
//! exactly the tensors the network reads, under the checkpoint's own names, whatever the
//! network; the tiny writer saves those names and the benchmarks count them. The backend
//! has no tensors of its own to offer, so a network that looks for an optional layout
//! (`text_model.`, `vision_model.vision_model.`) takes its default one.
//!
//! Each weight is made on the CPU in f32 whatever the target, so every device and dtype
//! gets the same values, then cast and moved. Values come from one of two sources:
//!
//! - [`Values::Seeded`]: a function of the seed and the weight's name alone ([`seeded`]),
//!   so the same seed gives the same bytes whatever order the networks ask in, and the
//!   tiny writer can make a file's values again from the names and shapes instead of
//!   keeping a copy of each.
//! - [`Values::Initialisers`]: drawn from the initialiser the network names (candle's, as
//!   `VarMap` would use), as the benchmarks want. They are plain tensors, not `Var`s: candle
//!   keeps a forward pass's whole autograd graph alive for variables (11 GB for a UNet call
//!   at 512x512), which a loaded checkpoint never does; and nothing else holds them, so a
//!   network that keeps its own copy of a weight (a transposed one) holds the memory a
//!   checkpoint load would.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Where a random weight's values come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Values {
    /// [`seeded`] values from this seed and the weight's name.
    Seeded(u64),
    /// The initialiser the network names for the weight.
    Initialisers,
}

/// A `VarBuilder` backend that makes up every weight asked of it (see the module doc).
pub(crate) struct RandomWeights {
    values: Values,
    /// Every weight asked for so far, by name.
    shapes: Mutex<BTreeMap<String, Shape>>,
}

impl RandomWeights {
    pub(crate) fn new(values: Values) -> Self {
        RandomWeights {
            values,
            shapes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `build` (a network's constructor) on these weights, in `dtype` on `device`.
    pub(crate) fn build<M>(
        &self,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    ) -> candle_core::Result<M> {
        build(VarBuilder::from_backend(
            Box::new(self),
            dtype,
            device.clone(),
        ))
    }

    /// The name and shape of every weight the networks built so far asked for, by name.
    pub(crate) fn into_shapes(self) -> BTreeMap<String, Shape> {
        self.shapes.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimpleBackend for &RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(earlier) = shapes.get(name) {
                if earlier != &shape {
                    candle_core::bail!("tensor {name} asked for as {shape:?} and as {earlier:?}");
                }
            }
            shapes.insert(name.to_owned(), shape.clone());
        }
        let t = match self.values {
            Values::Seeded(seed) => {
                Tensor::from_vec(seeded(seed, name, shape.dims()), shape, &Device::Cpu)?
            }
            Values::Initialisers => init
                .var(shape, DType::F32, &Device::Cpu)?
                .as_tensor()
                .detach(),
        };
        t.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _device: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a random weight needs its shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Deterministic values for one tensor. Norm weights sit near 1 and biases near 0, so the
/// network behaves like a trained one in scale; every other weight is uniform in
/// ±1/sqrt(fan_in) (PyTorch's default scale), so activations neither vanish nor explode.
/// Nothing is exactly 0 or 1, so a parity test also checks that biases and norm weights are used.
pub(crate) fn seeded(seed: u64, name: &str, dims: &[usize]) -> Vec<f32> {
    let mut state = seed ^ fnv1a(name.as_bytes());
    let numel: usize = dims.iter().product();
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 24 random bits to a float in [-1, 1).
        ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    };
    let is_norm = dims.len() == 1 && (name.contains("norm") || name.contains("layer_norm"));
    if is_norm && name.ends_with("weight") {
        (0..numel).map(|_| 1.0 + 0.1 * uniform()).collect()
    } else if dims.len() == 1 {
        (0..numel).map(|_| 0.05 * uniform()).collect()
    } else {
        let fan_in: usize = dims[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        (0..numel).map(|_| bound * uniform()).collect()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network asking for one name twice gets the same seeded values, and a second shape
    /// for a name is refused; what was asked for is listed by name.
    #[test]
    fn names_and_shapes_are_recorded_and_seeded_values_repeat() -> candle_core::Result<()> {
        let weights = RandomWeights::new(Values::Seeded(7));
        let (a, again) = weights.build(DType::F32, &Device::Cpu, |vb| {
            let a = vb.get((2, 3), "b.weight")?;
            let again = vb.get((2, 3), "b.weight")?;
            vb.get(4, "a.bias")?;
            assert!(vb.get((3, 2), "b.weight").is_err());
            Ok((a, again))
        })?;
        let diff = (a - again)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let shapes: Vec<(String, Vec<usize>)> = weights
            .into_shapes()
            .into_iter()
            .map(|(name, shape)| (name, shape.dims().to_vec()))
            .collect();
        assert_eq!(
            shapes,
            [("a.bias".into(), vec![4]), ("b.weight".into(), vec![2, 3])]
        );
        Ok(())
    }
}
