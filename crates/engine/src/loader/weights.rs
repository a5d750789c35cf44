//! One weights file of a model directory: which file, its dtype and size, and a
//! `VarBuilder` over it.
//!
//! A component's weights are `{stem}.safetensors` or the `{stem}.fp16.safetensors` variant;
//! [`WeightsFile::find`] picks one and reads its header, and every failure afterwards
//! (mapping the file, a tensor missing or misshapen for the config) is wrapped with the
//! file's path. The networks' components and the safety checker both load through it; it
//! imports nothing of the engine but the error type, so neither import the other through it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// One weights file and what its header says.
#[derive(Debug, Clone)]
pub(crate) struct WeightsFile {
    pub(crate) path: PathBuf,
    pub(crate) dtype: DType,
    pub(crate) parameters: usize,
}

impl WeightsFile {
    /// Finds `{stem}.safetensors`, else `{stem}.fp16.safetensors`, in `dir`, and reads its header.
    pub(crate) fn find(dir: &Path, stem: &str) -> Result<Self> {
        let full = dir.join(format!("{stem}.safetensors"));
        let half = dir.join(format!("{stem}.fp16.safetensors"));
        let path = if full.is_file() {
            full
        } else if half.is_file() {
            half
        } else {
            return Err(Error::File {
                path: full,
                message: format!(
                    "missing: the weights must be `{stem}.safetensors` or `{stem}.fp16.safetensors` \
                     (convert .bin checkpoints to safetensors first)"
                ),
            });
        };
        // SAFETY: the mapping is read-only and dropped before this function returns;
        // a weights file changed underneath a running server is an operator error we cannot guard.
        let tensors =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }.map_err(|e| {
                Error::File {
                    path: path.clone(),
                    message: format!("not a readable safetensors file: {e}"),
                }
            })?;
        let mut dtype = None;
        let mut parameters = 0;
        for (_, view) in tensors.tensors() {
            parameters += view.shape().iter().product::<usize>();
            dtype.get_or_insert(view.dtype());
        }
        let dtype = match dtype {
            Some(safetensors::Dtype::F16) => DType::F16,
            Some(safetensors::Dtype::BF16) => DType::BF16,
            Some(safetensors::Dtype::F32) => DType::F32,
            other => {
                return Err(Error::File {
                    path,
                    message: format!("weights of type {other:?}; accepted: F32, F16, BF16"),
                })
            }
        };
        Ok(WeightsFile {
            path,
            dtype,
            parameters,
        })
    }

    /// A VarBuilder over this file converting to `dtype` on `device`.
    pub(crate) fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        // SAFETY: as in `find`; the mapping lives as long as the VarBuilder that reads it.
        unsafe { VarBuilder::from_mmaped_safetensors(&[&self.path], dtype, device) }.map_err(|e| {
            Error::File {
                path: self.path.clone(),
                message: format!("cannot map the weights: {e}"),
            }
        })
    }

    /// Wraps a failure while building a network from this file (a missing tensor or a wrong
    /// shape: candle's message names the tensor).
    pub(crate) fn build_error(&self, e: candle_core::Error) -> Error {
        Error::File {
            path: self.path.clone(),
            message: format!("does not match its config: {e}"),
        }
    }
}
