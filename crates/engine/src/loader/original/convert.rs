//! `sie model convert`: a single-file checkpoint written out as a diffusers directory, which
//! diffusers' `from_pretrained` and `sie` itself load without any hint.
//!
//! The weights are not mapped a second time: each network is built on the CPU through the
//! same renaming backend the loader uses, in the file's own dtype, and every tensor the
//! network asked for is saved under the name it asked by — exactly the tensors a diffusers
//! directory has (the networks ask for what diffusers' classes hold; `sie model tiny` is made
//! the same way and diffusers loads it). The directory is written beside `out` under a
//! temporary name and renamed into place at the end, so a failure leaves nothing half-written
//! and an existing `out` is never touched.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use super::names::OriginalBackend;
use super::TokenizerSource;
use crate::error::{Error, Result};
use crate::loader::weights::WeightsFile;
use crate::loader::ModelFiles;
use crate::networks::{ClipTextEncoder, UNet, Vae};
use crate::tiny::{io_error, write_json, write_sd2_tokenizer, write_text};

/// The diffusers version the written configs claim (the one the layout was checked against).
const DIFFUSERS_VERSION: &str = "0.42.1";

/// Writes `files` (a single-file checkpoint) as a diffusers directory at `out`, which must not
/// exist yet.
pub fn convert(files: &ModelFiles, out: &Path) -> Result<()> {
    let Some(single) = &files.single_file else {
        return Err(Error::File {
            path: files.root.clone(),
            message: "already a diffusers directory; convert reads a single-file checkpoint".into(),
        });
    };
    if out.exists() {
        return Err(Error::File {
            path: out.to_owned(),
            message: "already exists; give a new directory for --out (nothing is overwritten)"
                .into(),
        });
    }
    let name = out
        .file_name()
        .ok_or_else(|| io_error(out, "--out needs a directory name"))?
        .to_string_lossy();
    let staging = out.with_file_name(format!(".{name}.converting-{}", std::process::id()));
    let written = write_all(files, single, &staging)
        .and_then(|()| std::fs::rename(&staging, out).map_err(|e| io_error(out, e)));
    if written.is_err() {
        // Best effort: the staging directory is ours alone.
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_all(
    files: &ModelFiles,
    single: &super::super::files::SingleFile,
    dir: &Path,
) -> Result<()> {
    let class = |component: &str| -> Value {
        match component {
            "scheduler" => json!(["diffusers", single.scheduler["_class_name"]]),
            "text_encoder" => json!(["transformers", "CLIPTextModel"]),
            "tokenizer" => json!(["transformers", "CLIPTokenizer"]),
            "unet" => json!(["diffusers", "UNet2DConditionModel"]),
            _ => json!(["diffusers", "AutoencoderKL"]),
        }
    };
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": files.pipeline_class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": class("scheduler"),
            "text_encoder": class("text_encoder"),
            "tokenizer": class("tokenizer"),
            "unet": class("unet"),
            "vae": class("vae"),
        }),
    )?;
    let versioned = |config: &Value| {
        let mut config = config.clone();
        if config.get("_diffusers_version").is_none() {
            config["_diffusers_version"] = json!(DIFFUSERS_VERSION);
        }
        config
    };
    let configs = &single.configs;
    write_json(&dir.join("unet/config.json"), &versioned(&configs.unet))?;
    write_json(&dir.join("vae/config.json"), &versioned(&configs.vae))?;
    write_json(&dir.join("text_encoder/config.json"), &configs.text_encoder)?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &single.scheduler,
    )?;
    match &files.tokenizer {
        TokenizerSource::BuiltInSd2 => write_sd2_tokenizer(&dir.join("tokenizer"))?,
        TokenizerSource::Dir(from) => {
            for name in [
                "vocab.json",
                "merges.txt",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ] {
                let source = from.join(name);
                if source.is_file() {
                    let text = std::fs::read_to_string(&source).map_err(|e| Error::File {
                        path: source.clone(),
                        message: format!("cannot read the tokenizer file: {e}"),
                    })?;
                    write_text(&dir.join("tokenizer").join(name), &text)?;
                }
            }
        }
    }

    let text = &files.text_encoder;
    save_network(
        &files.text_encoder_weights,
        &dir.join("text_encoder/model.safetensors"),
        |vb| ClipTextEncoder::new(vb, text).map(drop),
    )?;
    let unet = &files.unet;
    save_network(
        &files.unet_weights,
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        |vb| UNet::new(vb, unet).map(drop),
    )?;
    let vae = &files.vae;
    save_network(
        &files.vae_weights,
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        |vb| Vae::new(vb, vae).map(drop),
    )?;
    // safetensors writes through a private temporary file (mode 0600); give the weights the
    // permissions every other file here got from the umask, so the service's user can read them.
    let index = dir.join("model_index.json");
    let permissions = std::fs::metadata(&index)
        .map_err(|e| io_error(&index, e))?
        .permissions();
    for weights in [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let path = dir.join(weights);
        std::fs::set_permissions(&path, permissions.clone()).map_err(|e| io_error(&path, e))?;
    }
    Ok(())
}

/// Builds one network through the renaming backend and saves every tensor it read, under the
/// names it asked for, each in its own dtype in the file.
fn save_network(
    weights: &WeightsFile,
    path: &Path,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<()> {
    let Some(inner) = weights.original_backend() else {
        return Err(Error::File {
            path: weights.path.clone(),
            message: "not an original-layout checkpoint".into(),
        });
    };
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let recording = Recording {
        inner,
        seen: seen.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(recording), weights.dtype, Device::Cpu);
    build(vb).map_err(|e| weights.build_error(e))?;
    let tensors = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let metadata = Some(HashMap::from([("format".to_owned(), "pt".to_owned())]));
    safetensors::tensor::serialize_to_file(&tensors, metadata, path).map_err(|e| io_error(path, e))
}

/// Passes reads through to `inner`, keeping each tensor read as the file holds it (its own
/// dtype, not the one the network is built in: a file mixing dtypes converts unchanged). Each
/// tensor is read once, kept, and converted for the network from that one read.
struct Recording {
    inner: OriginalBackend,
    seen: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl Recording {
    fn keep(&self, name: &str, tensor: Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let for_network = tensor.to_dtype(dtype)?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), tensor);
        Ok(for_network)
    }
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.inner.read_shaped(name, &shape, device)?;
        self.keep(name, tensor, dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.inner.read(name, device)?;
        self.keep(name, tensor, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
