//! The safety checker: diffusers' `StableDiffusionSafetyChecker`, rewritten.
//!
//! The layout is CompVis/stable-diffusion-safety-checker's: `config.json` (a
//! transformers `CLIPConfig`, of which only `vision_config` and
//! `projection_dim` matter), `model.safetensors`, and a `CLIPImageProcessor`
//! `preprocessor_config.json` (in a pipeline directory, under
//! `feature_extractor/`). An image is preprocessed (`preprocess.rs`), embedded
//! by the CLIP vision tower (`vision.rs`) and projected; its cosine similarity
//! to 3 "special care" and 17 concept embeddings, less each one's threshold,
//! gives the scores. As diffusers does it: the scores are f32 rounded to 3
//! decimals, a special-care hit adds 0.01 to every later score, and an image
//! is flagged when any concept score is above 0. Flagged images are returned
//! black. The 17 and 3 are the diffusers class's own shapes, not config sizes;
//! every size in between comes from `config.json`.
//!
//! The checker is a network of its own (the vision tower reuses the text encoder's
//! layers) with its own files; it reads them through the loader's `JsonConfig` and
//! `WeightsFile`, and the loader builds it into a `StableDiffusion` when asked. Outside the
//! engine only [`SafetyChecker`] and its [`SafetyVerdict`] are seen.

mod preprocess;
mod vision;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::loader::json::{FromJson, JsonConfig};
use crate::loader::weights::WeightsFile;
use crate::networks::config::{check_heads, ClipActivation};
use crate::networks::layers::{linear_no_bias, Linear};
use preprocess::PreprocessorConfig;
use vision::ClipVisionModel;

/// How many concept embeddings `StableDiffusionSafetyChecker` has.
const CONCEPTS: usize = 17;
/// How many special-care embeddings it has.
const SPECIAL_CARE: usize = 3;
/// What a special-care hit adds to the scores after it (diffusers' `adjustment`).
const SPECIAL_CARE_ADJUSTMENT: f32 = 0.01;

/// The `vision_config` of the checker's `config.json` (transformers' `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub activation: ClipActivation,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Patches per image: (image_size / patch_size)^2.
    pub(crate) fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Parses a `vision_config` object; absent keys take `CLIPVisionConfig`'s defaults.
    pub(crate) fn from_config(c: &JsonConfig) -> Result<Self> {
        let activation = ClipActivation::from_config(c)?;
        let config = ClipVisionConfig {
            hidden_size: c.usize_or("hidden_size", 768)?,
            intermediate_size: c.usize_or("intermediate_size", 3072)?,
            num_hidden_layers: c.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: c.usize_or("num_attention_heads", 12)?,
            num_channels: c.usize_or("num_channels", 3)?,
            image_size: c.usize_or("image_size", 224)?,
            patch_size: c.usize_or("patch_size", 32)?,
            activation,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
        };
        check_heads(c, config.num_attention_heads, config.hidden_size)?;
        if config.patch_size == 0 || config.image_size % config.patch_size != 0 {
            return Err(c.error(
                "patch_size",
                format!(
                    "{} does not divide image_size {}",
                    config.patch_size, config.image_size
                ),
            ));
        }
        if config.num_channels != 3 {
            return Err(c.error(
                "num_channels",
                format!(
                    "{} is not supported; accepted: 3 (the checker sees RGB images)",
                    config.num_channels
                ),
            ));
        }
        Ok(config)
    }
}

/// The checker's `config.json` (a transformers `CLIPConfig`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SafetyCheckerConfig {
    pub vision: ClipVisionConfig,
    pub projection_dim: usize,
}

impl SafetyCheckerConfig {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let c = JsonConfig::load(path)?;
        let vision = match c.get("vision_config") {
            Some(serde_json::Value::Object(map)) => {
                let mut map = map.clone();
                // Configs from before transformers 4.24 also carry `vision_config_dict`, whose
                // values CLIPConfig lets win over `vision_config`'s.
                if let Some(serde_json::Value::Object(overrides)) = c.get("vision_config_dict") {
                    map.extend(overrides.clone());
                }
                let text = serde_json::Value::Object(map).to_string();
                // Errors then name the section: "<file> (vision_config): field `...`".
                let section = PathBuf::from(format!("{} (vision_config)", path.display()));
                ClipVisionConfig::from_config(&JsonConfig::from_json(&section, &text)?)?
            }
            Some(v) => {
                return Err(c.error(
                    "vision_config",
                    format!("expected an object (a CLIPVisionConfig), found {v}"),
                ))
            }
            None => {
                return Err(c.error(
                    "vision_config",
                    "missing; a safety checker's config is a CLIPConfig with a vision_config",
                ))
            }
        };
        Ok(SafetyCheckerConfig {
            vision,
            projection_dim: c.usize_or("projection_dim", 512)?,
        })
    }
}

/// Where a checker's files are.
#[derive(Debug, Clone)]
struct SafetyCheckerFiles {
    /// The directory with `config.json` and the weights.
    dir: PathBuf,
    config: SafetyCheckerConfig,
    weights: WeightsFile,
    /// The preprocessor config read, if any (else `CLIPImageProcessor`'s defaults).
    preprocessor_path: Option<PathBuf>,
    preprocessor: PreprocessorConfig,
}

impl SafetyCheckerFiles {
    /// Opens a checker. `dir` is either a pipeline directory with `safety_checker/` (and
    /// `feature_extractor/`) or the checker's own directory, whose preprocessor config is
    /// `preprocessor_config.json` beside `config.json` (as the CompVis repository has it) or in a
    /// sibling `feature_extractor/` (as a pipeline directory has it).
    fn open(dir: &Path) -> Result<Self> {
        let (checker_dir, candidates) = if dir.join("safety_checker").is_dir() {
            (
                dir.join("safety_checker"),
                vec![dir.join("feature_extractor/preprocessor_config.json")],
            )
        } else {
            (
                dir.to_owned(),
                vec![
                    dir.join("preprocessor_config.json"),
                    dir.join("../feature_extractor/preprocessor_config.json"),
                ],
            )
        };
        let config_path = checker_dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::File {
                path: config_path,
                message: "missing: a safety checker directory has config.json and \
                          model.safetensors (CompVis/stable-diffusion-safety-checker's layout), \
                          or is a pipeline directory with safety_checker/"
                    .into(),
            });
        }
        let config = SafetyCheckerConfig::load(&config_path)?;
        let weights = WeightsFile::find(&checker_dir, "model")?;
        let preprocessor_path = candidates.into_iter().find(|p| p.is_file());
        let preprocessor = match &preprocessor_path {
            Some(p) => PreprocessorConfig::load(p)?,
            None => PreprocessorConfig::default(),
        };
        // The vision tower takes exactly image_size x image_size pixels.
        let size = config.vision.image_size;
        if preprocessor.crop != Some((size, size)) {
            let field_path = preprocessor_path
                .clone()
                .unwrap_or_else(|| checker_dir.join("preprocessor_config.json (defaults)"));
            return Err(Error::config(
                field_path,
                "crop_size",
                format!(
                    "{:?} does not give the {size}x{size} images the vision_config's image_size \
                     in {} asks for",
                    preprocessor.crop,
                    config_path.display()
                ),
            ));
        }
        Ok(SafetyCheckerFiles {
            dir: checker_dir,
            config,
            weights,
            preprocessor_path,
            preprocessor,
        })
    }
}

/// One image's verdict, with the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyVerdict {
    /// Cosine similarity to each special-care embedding, as f32.
    pub special_cosine: Vec<f32>,
    /// Cosine similarity to each concept embedding.
    pub concept_cosine: Vec<f32>,
    /// `round(cos - threshold + adjustment, 3)` per special-care embedding, as diffusers keeps them.
    pub special_scores: Vec<f32>,
    /// The same per concept.
    pub concept_scores: Vec<f32>,
    /// Any concept score above 0: the image is not returned.
    pub nsfw: bool,
}

/// A loaded safety checker.
pub struct SafetyChecker {
    files: SafetyCheckerFiles,
    vision: ClipVisionModel,
    projection: Linear,
    /// (CONCEPTS, projection_dim) and (SPECIAL_CARE, projection_dim), unit rows, f32.
    concept_embeds: Tensor,
    special_care_embeds: Tensor,
    /// Per-embedding thresholds; public so a caller (a test) can move them.
    pub concept_thresholds: Vec<f32>,
    pub special_care_thresholds: Vec<f32>,
    device: Device,
}

impl SafetyChecker {
    /// Loads the checker in `dir`: a pipeline directory with `safety_checker/` (and
    /// `feature_extractor/`), or the checker's own directory.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = SafetyCheckerFiles::open(dir)?;
        let vb = files.weights.var_builder(dtype, device)?;
        Self::new(vb, files, device).map_err(|e| match e {
            Error::Tensor(t) => files_error(dir, t),
            other => other,
        })
    }

    fn new(vb: VarBuilder, files: SafetyCheckerFiles, device: &Device) -> Result<Self> {
        let w = &files.weights;
        let (vision, projection, concepts, special, concept_w, special_w) =
            build(vb, &files.config).map_err(|e| w.build_error(e))?;
        let to_vec = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec1()?)
        };
        Ok(SafetyChecker {
            concept_embeds: l2_normalize(&concepts.to_dtype(DType::F32)?)?,
            special_care_embeds: l2_normalize(&special.to_dtype(DType::F32)?)?,
            concept_thresholds: to_vec(&concept_w)?,
            special_care_thresholds: to_vec(&special_w)?,
            vision,
            projection,
            files,
            device: device.clone(),
        })
    }

    /// Where the checker came from and its size, as `sie model check` prints it: the
    /// directory, the parameters, the image size and the preprocessor config read.
    pub fn summary(&self) -> String {
        let f = &self.files;
        format!(
            "{} ({} parameters, {}x{} images, preprocessor {})",
            f.dir.display(),
            f.weights.parameters,
            f.config.vision.image_size,
            f.config.vision.image_size,
            f.preprocessor_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "defaults".into())
        )
    }

    /// The (3, size, size) pixel values the vision tower sees for one RGB image.
    pub fn pixel_values(&self, rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
        let values = self.files.preprocessor.preprocess(rgb, width, height)?;
        let (h, w) = self.files.preprocessor.output_size(height, width);
        Ok(Tensor::from_vec(values, (3, h, w), &Device::Cpu)?)
    }

    /// Cosine similarities of (batch, 3, size, size) pixel values to the (special-care, concept)
    /// embeddings: two (batch, n) f32 tensors on the CPU.
    fn cosine(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let pooled = self.vision.forward(&pixels.to_device(&self.device)?)?;
        let embeds = l2_normalize(&self.projection.forward(&pooled)?.to_dtype(DType::F32)?)?;
        let special = embeds.matmul(&self.special_care_embeds.t()?)?;
        let concept = embeds.matmul(&self.concept_embeds.t()?)?;
        Ok((
            special.to_device(&Device::Cpu)?,
            concept.to_device(&Device::Cpu)?,
        ))
    }

    /// diffusers' `StableDiffusionSafetyChecker.forward` without the blacking out: one verdict per
    /// (3, size, size) entry of `pixels`.
    pub fn check_pixels(&self, pixels: &Tensor) -> Result<Vec<SafetyVerdict>> {
        let (special, concept) = self.cosine(pixels)?;
        let special: Vec<Vec<f32>> = special.to_vec2()?;
        let concept: Vec<Vec<f32>> = concept.to_vec2()?;
        Ok(special
            .into_iter()
            .zip(concept)
            .map(|(s, c)| self.verdict(s, c))
            .collect())
    }

    /// One verdict per `width x height` RGB image, checked as one batch.
    pub fn check(
        &self,
        images: &[&[u8]],
        width: usize,
        height: usize,
    ) -> Result<Vec<SafetyVerdict>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = images
            .iter()
            .map(|rgb| self.pixel_values(rgb, width, height))
            .collect::<Result<Vec<_>>>()?;
        self.check_pixels(&Tensor::stack(&pixels, 0)?)
    }

    /// The scores and the flag from one image's similarities, in diffusers' order and f32 rounding:
    /// special-care scores first, each hit setting the adjustment every later score gets.
    fn verdict(&self, special_cosine: Vec<f32>, concept_cosine: Vec<f32>) -> SafetyVerdict {
        let mut adjustment = 0f32;
        let score = |cos: f32, threshold: f32, adjustment: f32| -> f32 {
            // numpy: float32 - float and + float stay float32; round(x, 3) is rint(x * 1000) / 1000.
            let x = (cos - threshold) + adjustment;
            (x * 1000f32).round_ties_even() / 1000f32
        };
        let mut special_scores = Vec::with_capacity(special_cosine.len());
        for (&cos, &threshold) in special_cosine.iter().zip(&self.special_care_thresholds) {
            let s = score(cos, threshold, adjustment);
            if s > 0.0 {
                adjustment = SPECIAL_CARE_ADJUSTMENT;
            }
            special_scores.push(s);
        }
        let concept_scores: Vec<f32> = concept_cosine
            .iter()
            .zip(&self.concept_thresholds)
            .map(|(&cos, &threshold)| score(cos, threshold, adjustment))
            .collect();
        let nsfw = concept_scores.iter().any(|&s| s > 0.0);
        SafetyVerdict {
            special_cosine,
            concept_cosine,
            special_scores,
            concept_scores,
            nsfw,
        }
    }

    /// Checks the images and blacks out (all zero bytes) the flagged ones; returns the flags.
    pub(crate) fn apply(
        &self,
        images: &mut [Vec<u8>],
        width: usize,
        height: usize,
    ) -> Result<Vec<bool>> {
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        let flags: Vec<bool> = self
            .check(&refs, width, height)?
            .into_iter()
            .map(|v| v.nsfw)
            .collect();
        for (image, &flagged) in images.iter_mut().zip(&flags) {
            if flagged {
                image.fill(0);
            }
        }
        Ok(flags)
    }
}

type Parts = (ClipVisionModel, Linear, Tensor, Tensor, Tensor, Tensor);

/// The checker's modules under its tensor names. Checkpoints saved by transformers 4 (the
/// published CompVis one) nest the tower as `vision_model.vision_model.`; transformers 5 saves
/// `vision_model.`; both load.
pub(crate) fn build(vb: VarBuilder, c: &SafetyCheckerConfig) -> candle_core::Result<Parts> {
    let tower = if vb.contains_tensor("vision_model.vision_model.embeddings.class_embedding") {
        vb.pp("vision_model").pp("vision_model")
    } else {
        vb.pp("vision_model")
    };
    let vision = ClipVisionModel::new(tower, &c.vision)?;
    let projection = linear_no_bias(
        c.vision.hidden_size,
        c.projection_dim,
        vb.pp("visual_projection"),
    )?;
    let concepts = vb.get((CONCEPTS, c.projection_dim), "concept_embeds")?;
    let special = vb.get((SPECIAL_CARE, c.projection_dim), "special_care_embeds")?;
    let concept_w = vb.get(CONCEPTS, "concept_embeds_weights")?;
    let special_w = vb.get(SPECIAL_CARE, "special_care_embeds_weights")?;
    Ok((vision, projection, concepts, special, concept_w, special_w))
}

/// torch's `F.normalize(x, dim=1)`: each row over max(its L2 norm, 1e-12).
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norm)
}

fn files_error(dir: &Path, e: candle_core::Error) -> Error {
    Error::File {
        path: dir.to_owned(),
        message: format!("safety checker: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of CompVis/stable-diffusion-safety-checker's `config.json` (transformers 4.2x):
    /// `vision_config` at CLIPVisionConfig's defaults plus `vision_config_dict` with ViT-L/14's sizes.
    #[test]
    fn the_published_config_reads_as_vit_l_14() {
        let dir = tempfile_dir();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            r#"{
              "architectures": ["StableDiffusionSafetyChecker"],
              "model_type": "clip",
              "projection_dim": 768,
              "text_config": {"hidden_size": 768, "model_type": "clip_text_model"},
              "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072},
              "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                "num_hidden_layers": 12, "patch_size": 32, "image_size": 224,
                                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "model_type": "clip_vision_model"},
              "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                     "num_hidden_layers": 24, "patch_size": 14}
            }"#,
        )
        .unwrap();
        let c = SafetyCheckerConfig::load(&path).unwrap();
        assert_eq!(c.projection_dim, 768);
        assert_eq!(
            (
                c.vision.hidden_size,
                c.vision.intermediate_size,
                c.vision.num_attention_heads,
                c.vision.num_hidden_layers,
                c.vision.patch_size,
                c.vision.image_size,
                c.vision.num_patches()
            ),
            (1024, 4096, 16, 24, 14, 224, 256)
        );
        assert_eq!(c.vision.activation, ClipActivation::QuickGelu);

        std::fs::write(&path, r#"{"vision_config": {"patch_size": 15}}"#).unwrap();
        let e = SafetyCheckerConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("config.json (vision_config)") && e.contains("patch_size"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// The published checker's old-style `preprocessor_config.json` (a CLIPFeatureExtractor with
    /// bare integers) means the same as SD 2.1's `{"shortest_edge": 224}` / `{"height", "width"}`.
    #[test]
    fn the_legacy_preprocessor_config_reads_as_the_defaults() {
        let dir = tempfile_dir();
        let path = dir.join("preprocessor_config.json");
        std::fs::write(
            &path,
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(
            PreprocessorConfig::load(&path).unwrap(),
            PreprocessorConfig::default()
        );
        std::fs::write(&path, r#"{"resample": 1}"#).unwrap();
        let e = PreprocessorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("resample") && e.contains("3 (bicubic)"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sie-safety-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
