//! One component's weights in a model directory: which file (or shards), its dtype and size,
//! and a `VarBuilder` over it.
//!
//! A component's weights are `{stem}.safetensors` or the `{stem}.fp16.safetensors` variant,
//! whole or in shards beside an index (`{stem}.safetensors.index.json`, as diffusers and
//! transformers save large checkpoints); [`WeightsFile::find`] picks one, checks every
//! shard the index names (present, readable, holding what the index says) and reads the
//! headers, and every failure afterwards (mapping, a tensor missing or misshapen for the
//! config) is wrapped with the file's path. Shards are mapped, not copied: one VarBuilder
//! reads across them. The networks' components and the safety checker both load through it; it
//! imports nothing of the engine but the error type, so neither import the other through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::original::names::{Network, OriginalBackend};
use crate::error::{Error, Result};

/// One component's weights, a file or the shards an index names, and what their headers say.
#[derive(Debug, Clone)]
pub(crate) struct WeightsFile {
    /// The weights file, or the shards' index: what errors name.
    pub(crate) path: PathBuf,
    /// The files the tensors are read from: `path` itself, or every shard.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) dtype: DType,
    pub(crate) parameters: usize,
    /// Set when the tensors are named in the original SD 2.x layout (a single-file
    /// checkpoint): the mapped file and the network's naming, read through a renaming.
    original: Option<Original>,
}

/// A mapped original-layout file and one network's naming in it.
#[derive(Clone)]
struct Original(Arc<MmapedSafetensors>, Network);

impl std::fmt::Debug for Original {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Original").field(&self.1).finish()
    }
}

impl WeightsFile {
    /// Finds the component's weights in `dir`, the first that exists of
    /// `{stem}.safetensors`, its shards' index `{stem}.safetensors.index.json`,
    /// `{stem}.fp16.safetensors` and `{stem}.safetensors.index.fp16.json` (as diffusers and
    /// transformers save them), and reads every header.
    pub(crate) fn find(dir: &Path, stem: &str) -> Result<Self> {
        let candidates = [
            (format!("{stem}.safetensors"), false),
            (format!("{stem}.safetensors.index.json"), true),
            (format!("{stem}.fp16.safetensors"), false),
            (format!("{stem}.safetensors.index.fp16.json"), true),
        ];
        let Some((path, sharded)) = candidates
            .iter()
            .map(|(name, sharded)| (dir.join(name), *sharded))
            .find(|(path, _)| path.is_file())
        else {
            return Err(Error::File {
                path: dir.join(&candidates[0].0),
                message: format!(
                    "missing: the weights must be `{stem}.safetensors`, `{stem}.fp16.safetensors`, \
                     or shards with their index `{stem}.safetensors.index.json` (or \
                     `.index.fp16.json`); convert .bin checkpoints to safetensors first"
                ),
            });
        };
        let files = if sharded {
            shards(&path)?
        } else {
            vec![path.clone()]
        };
        let mut dtype = None;
        let mut parameters = 0;
        for file in &files {
            let tensors = read_header(file)?;
            for (_, view) in tensors.tensors() {
                parameters += view.shape().iter().product::<usize>();
                dtype.get_or_insert(view.dtype());
            }
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
            files,
            dtype,
            parameters,
            original: None,
        })
    }

    /// One network's part of a single-file checkpoint in the original layout (already mapped
    /// and checked by `original::Header`).
    pub(crate) fn original(
        path: &Path,
        dtype: DType,
        parameters: usize,
        file: Arc<MmapedSafetensors>,
        network: Network,
    ) -> Self {
        WeightsFile {
            path: path.to_owned(),
            files: vec![path.to_owned()],
            dtype,
            parameters,
            original: Some(Original(file, network)),
        }
    }

    /// The renaming backend over an original-layout file (`None` for diffusers-named weights).
    pub(crate) fn original_backend(&self) -> Option<OriginalBackend> {
        self.original
            .as_ref()
            .map(|Original(file, network)| OriginalBackend {
                file: file.clone(),
                network: network.clone(),
            })
    }

    /// Where the weights are, as `sie model check` says it: the file, or the shards and
    /// their index.
    pub(crate) fn describe(&self) -> String {
        if self.files.len() == 1 && self.files[0] == self.path {
            self.path.display().to_string()
        } else {
            format!(
                "{} shards listed in {}",
                self.files.len(),
                self.path.display()
            )
        }
    }

    /// A VarBuilder over this file converting to `dtype` on `device`.
    pub(crate) fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        if let Some(backend) = self.original_backend() {
            return Ok(VarBuilder::from_backend(
                Box::new(backend),
                dtype,
                device.clone(),
            ));
        }
        // SAFETY: as in `find`; the mapping lives as long as the VarBuilder that reads it.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device) }.map_err(|e| {
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

/// A safetensors file's header and tensor table, mapped (not read) and dropped at once.
fn read_header(path: &Path) -> Result<candle_core::safetensors::MmapedSafetensors> {
    // SAFETY: the mapping is read-only and dropped by the caller before loading goes on; a
    // weights file changed underneath a running server is an operator error we cannot guard.
    unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| Error::File {
        path: path.to_owned(),
        message: format!("not a readable safetensors file (truncated or not safetensors?): {e}"),
    })
}

/// The shards a sharded checkpoint's `index` names (its `weight_map`: tensor to file, beside
/// it), each checked to exist and to hold every tensor the index puts in it.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::File {
        path: index.to_owned(),
        message: format!("cannot read the shards' index: {e}"),
    })?;
    let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File {
        path: index.to_owned(),
        message: format!("not a shards' index (JSON with a `weight_map`): {e}"),
    })?;
    let Some(map) = parsed.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::File {
            path: index.to_owned(),
            message: "has no `weight_map` object (tensor name to shard file)".into(),
        });
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    // Shard file name to the tensors the index says it holds, in the index's order.
    let mut by_shard: Vec<(String, Vec<&str>)> = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str().filter(|f| is_plain_file_name(f)) else {
            return Err(Error::File {
                path: index.to_owned(),
                message: format!(
                    "`weight_map` puts `{tensor}` in {file}, which is not a file name beside the index"
                ),
            });
        };
        match by_shard.iter_mut().find(|(f, _)| f == file) {
            Some((_, tensors)) => tensors.push(tensor),
            None => by_shard.push((file.to_owned(), vec![tensor])),
        }
    }
    if by_shard.is_empty() {
        return Err(Error::File {
            path: index.to_owned(),
            message: "`weight_map` names no tensor".into(),
        });
    }
    let mut files = Vec::with_capacity(by_shard.len());
    for (file, tensors) in by_shard {
        let shard = dir.join(&file);
        if !shard.is_file() {
            return Err(Error::File {
                path: shard,
                message: format!(
                    "missing: {} names this shard (for {} tensors, `{}` first)",
                    index.display(),
                    tensors.len(),
                    tensors[0]
                ),
            });
        }
        let held = read_header(&shard)?;
        let names: std::collections::HashSet<String> =
            held.tensors().into_iter().map(|(name, _)| name).collect();
        if let Some(absent) = tensors.iter().find(|t| !names.contains(**t)) {
            return Err(Error::File {
                path: index.to_owned(),
                message: format!("puts the tensor `{absent}` in {file}, which does not hold it"),
            });
        }
        files.push(shard);
    }
    Ok(files)
}

/// A shard's name in an index: a file beside it, not a path elsewhere.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}
