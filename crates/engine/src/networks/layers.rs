//! The layers the networks are built of: `Linear`, `Conv2d` and `GroupNorm`, each read
//! from a checkpoint under its own tensor names.
//!
//! Each constructor reads the same tensors, with the same initialiser hints for random
//! weights, as the candle-nn function of the same name, so a checkpoint and the random
//! builders (`random.rs`) fill them alike; what differs is where the arithmetic happens.
//!
//! `Linear` stores its weight transposed, and folds every leading dimension into one matrix
//! product. candle's `Linear` multiplies by a transposed view of the `(out, in)` weight,
//! once per batch entry. The CPU GEMM then repacks the whole weight on every call,
//! gathering it column by column; with few rows (the text encoder's 77 tokens) that packing
//! cost more than the arithmetic: profiled, 38% of the text encoder's time against 28% in
//! the multiply kernel. Here the weight is transposed once at load, to `(in, out)`
//! row-major, and a `(batch, tokens, in)` input is multiplied as one `(batch * tokens, in)`
//! matrix, so the weight is read in order and once per call, on every device.
//!
//! `Conv2d` and `GroupNorm` are `kernels`' own (an op we have kernels for is its weights
//! and options); here they are only read from the checkpoint.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels;
pub(crate) use crate::kernels::{Conv2d, GroupNorm};

#[derive(Debug, Clone)]
pub struct Linear {
    /// `(in, out)`, contiguous.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

/// As `candle_nn::linear`: `weight` `(out, in)` and `bias` `(out)` from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let mut l = linear_no_bias(in_dim, out_dim, vb.clone())?;
    let bound = 1. / (in_dim as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    l.bias = Some(vb.get_with_hints(out_dim, "bias", init)?);
    Ok(l)
}

/// As `candle_nn::linear_no_bias`: `weight` `(out, in)` from `vb`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Linear {
        weight_t: weight.t()?.contiguous()?,
        bias: None,
    })
}

impl Linear {
    /// The bare product `xs · weight`, `(..., out)`: the leading dimensions folded into one
    /// matrix of rows, no bias.
    fn product(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / in_dim.max(1);
        let out = xs.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight_t.dim(1)?;
        }
        out.reshape(out_dims)
    }

    /// `self.forward(xs) + residual`, `residual` shaped like the output: bias and residual
    /// added by `kernels::bias_residual` (one kernel where the device has one).
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        kernels::bias_residual(&self.product(xs)?, self.bias.as_ref(), residual)
    }

    /// The transformer's `proj_out` and its skip: `self.forward(tokens)` over an image's
    /// tokens `(batch, h * w, in)`, as the image `(batch, out, h, w)` of `residual`, plus
    /// `residual`, through `kernels::tokens_to_image_residual`.
    pub fn forward_to_image_residual(&self, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
        kernels::tokens_to_image_residual(&self.product(tokens)?, self.bias.as_ref(), residual)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let out = self.product(xs)?;
        match &self.bias {
            Some(bias) => out.broadcast_add(bias),
            None => Ok(out),
        }
    }
}

/// As `candle_nn::conv2d`: the weight `[out, in, k, k]` and bias `[out]` from `vb`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let candle = candle_nn::conv2d(in_channels, out_channels, kernel_size, config, vb)?;
    Ok(Conv2d {
        weight: candle.weight().clone(),
        bias: candle.bias().cloned(),
        config,
    })
}

/// As `candle_nn::group_norm`: `weight` and `bias` of `channels` from `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?,
        bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?,
        groups,
        eps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn matches_candle_linear() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (6, 5), &dev)?;
        let bias = Tensor::randn(0f32, 1., 6, &dev)?;
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".into(), bias.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let ours = linear(5, 6, vb.clone())?;
        let ours_no_bias = linear_no_bias(5, 6, vb)?;
        let theirs = candle_nn::Linear::new(weight.clone(), Some(bias));
        let theirs_no_bias = candle_nn::Linear::new(weight, None);
        for shape in [&[3usize, 5][..], &[2, 4, 5], &[2, 2, 3, 5]] {
            let x = Tensor::randn(0f32, 1., shape, &dev)?;
            for (a, b) in [(&ours, &theirs), (&ours_no_bias, &theirs_no_bias)] {
                let (got, want) = (a.forward(&x)?, b.forward(&x)?);
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{shape:?}: max diff {diff}");
            }
        }
        Ok(())
    }
}
