//! `sie model …`: the engine without the service, for operators and for parity checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sie_api::request::InputImage;
use sie_engine::candle_core::{Device, Tensor};
use sie_engine::output::{encode, ImageFormat};
use sie_engine::pipeline::{ImageToImage, Inpaint, Observer, Request, RgbImage, TextToImage};
use sie_engine::scheduler::SchedulerKind;
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_engine::{ModelFiles, SafetyCheckerSource, StableDiffusion};

use super::common::{DeviceArgs, Prediction, SingleFileArgs};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write the tiny random-weight model (SD 2.1's architecture at tiny widths).
    Tiny(TinyArgs),
    /// Check a model directory or single-file checkpoint and print what it holds and, for a
    /// single file, what was inferred.
    Check {
        /// A diffusers-layout Stable Diffusion 2.x directory, or a `.safetensors` checkpoint in
        /// the original SD 2.x layout.
        dir: PathBuf,
        #[command(flatten)]
        model_file: SingleFileArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Write a single-file checkpoint (original SD 2.x layout) as a diffusers directory.
    Convert(ConvertArgs),
    /// Generate images from a prompt, offline (from an image too with --image, inpainting
    /// with --mask).
    Run(Box<RunArgs>),
    /// Fetch a model directory from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN), verify
    /// every file, then check it.
    Pull(Box<super::pull::PullArgs>),
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The `.safetensors` checkpoint in the original SD 2.x layout.
    file: PathBuf,
    /// The diffusers directory to write; it must not exist yet.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model_file: SingleFileArgs,
}

#[derive(Args)]
pub struct TinyArgs {
    /// Directory to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// `v-prediction` (or `v_prediction`) writes a 2-1-like model (DDIM), `epsilon` a
    /// 2-1-base-like one (PNDM).
    #[arg(long, value_enum, default_value = "epsilon")]
    prediction_type: Prediction,
    /// Seed of the random weights: the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write an inpainting model: a 9-channel UNet (latents, mask, masked-image latents), as
    /// stabilityai/stable-diffusion-2-inpainting; it runs StableDiffusionInpaintPipeline only.
    #[arg(long)]
    inpainting: bool,
    /// Also write a tiny safety checker (safety_checker/, feature_extractor/).
    #[arg(long)]
    safety_checker: bool,
    /// The tiny checker's concept and special-care thresholds: -1 flags every image, 1 none.
    #[arg(
        long,
        default_value_t = 0.0,
        requires = "safety_checker",
        allow_hyphen_values = true
    )]
    checker_threshold: f32,
}

#[derive(Args)]
pub struct RunArgs {
    /// The model directory, or a `.safetensors` checkpoint in the original SD 2.x layout.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_file: SingleFileArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// 0..=2^63-1; random when left out (the seed used is printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Start from this image (PNG, JPEG or WebP): image-to-image, or inpainting with --mask.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Inpaint: the mask image (white = repaint), resized to the output size.
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    /// With --image: 0..=1, how far from the image the result may go (the share of the steps
    /// that run).
    #[arg(long, requires = "image", default_value_t = 0.8)]
    strength: f64,
    /// Defaults to the model's native size, or with --image to the image's size rounded
    /// down to multiples of 8.
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    /// A diffusers scheduler class name or an alias (LMS, DDIM, PNDM); defaults to the model's.
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 1)]
    images: usize,
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 0.0)]
    guidance_rescale: f64,
    /// Output file; with several images, FILE-1.EXT, FILE-2.EXT, ...
    #[arg(long)]
    out: PathBuf,
    /// Output encoding: png, jpeg (quality 95) or webp (lossless).
    #[arg(long, default_value = "png")]
    format: String,
    /// Use this safety checker (a checker directory, or a model directory with safety_checker/);
    /// by default the model directory's own safety_checker/ is used when it has one.
    #[arg(long, conflicts_with = "no_safety_checker")]
    safety_checker: Option<PathBuf>,
    /// Do not run a safety checker, even the model directory's own.
    #[arg(long)]
    no_safety_checker: bool,
    /// Also write token ids, text embeddings and the latents of every step to DIR/dump.safetensors.
    #[arg(long)]
    dump: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Tiny(args) => {
            let options = TinyOptions {
                prediction_type: args.prediction_type.engine(),
                seed: args.seed,
                inpainting: args.inpainting,
            };
            write_tiny_model(&args.out, options)?;
            println!("wrote the tiny model to {}", args.out.display());
            if args.safety_checker {
                let checker = TinyCheckerOptions {
                    threshold: args.checker_threshold,
                    seed: args.seed,
                };
                write_tiny_safety_checker(&args.out, checker)?;
                println!(
                    "wrote a tiny safety checker (thresholds {}) to {}",
                    args.checker_threshold,
                    args.out.join("safety_checker").display()
                );
            }
            Ok(())
        }
        ModelCommand::Check {
            dir,
            model_file,
            device,
        } => check(&dir, &model_file, &device),
        ModelCommand::Convert(args) => {
            let files = ModelFiles::open_with(&args.file, &args.model_file.options())?;
            files.convert(&args.out)?;
            println!(
                "wrote {} as a diffusers directory to {}",
                args.file.display(),
                args.out.display()
            );
            Ok(())
        }
        ModelCommand::Run(args) => generate(*args),
        ModelCommand::Pull(args) => super::pull::run(*args),
    }
}

/// `sie model check DIR`: the directory's (or single file's) summary, then the networks built
/// on `device` (`sie model pull` ends with it too).
pub(crate) fn check(
    dir: &Path,
    model_file: &SingleFileArgs,
    device: &DeviceArgs,
) -> anyhow::Result<()> {
    let files = ModelFiles::open_with(dir, &model_file.options())?;
    for (key, value) in files.summary() {
        println!("{key}: {value}");
    }
    // Building the networks checks every tensor's presence and shape.
    let mut options = device.load_options(SafetyCheckerSource::ModelDefault)?;
    options.single_file = model_file.options();
    let model = StableDiffusion::load(dir, &options)?;
    let runs_on = model.runs_on();
    println!("device: {} ({})", runs_on.device, runs_on.precision);
    if let Some(checker) = &model.safety_checker {
        println!("safety_checker: {}", checker.summary());
    }
    println!("ok: every tensor is present with the shape its config asks for");
    Ok(())
}

fn generate(args: RunArgs) -> anyhow::Result<()> {
    const MAX_SEED: u64 = (1 << 63) - 1;
    let seed = match args.seed {
        Some(s) if s > MAX_SEED => bail!("--seed {s} is out of range; accepted: 0..={MAX_SEED}"),
        Some(s) => s,
        None => sie_api::request::Seed::random().get(),
    };
    let scheduler = args
        .scheduler
        .as_deref()
        .map(SchedulerKind::parse)
        .transpose()
        .context("--scheduler")?;
    let format = ImageFormat::parse(&args.format).context("--format")?;
    let mut options =
        args.device
            .load_options(match (&args.safety_checker, args.no_safety_checker) {
                (_, true) => SafetyCheckerSource::Disabled,
                (Some(dir), false) => SafetyCheckerSource::Dir(dir.clone()),
                (None, false) => SafetyCheckerSource::ModelDefault,
            })?;
    options.single_file = args.model_file.options();
    let model = StableDiffusion::load(&args.model, &options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let image = args.image.as_deref().map(read_image).transpose()?;
    let mask = args.mask.as_deref().map(read_image).transpose()?;
    let mut common = TextToImage::new(&model, args.prompt, seed);
    common.negative_prompt = args.negative_prompt;
    common.num_inference_steps = args.steps;
    common.guidance_scale = args.guidance;
    // As diffusers: with an input image, the output takes its size rounded down to 8.
    let (default_width, default_height) = match &image {
        Some(img) => (img.width() / 8 * 8, img.height() / 8 * 8),
        None => (common.width, common.height),
    };
    common.width = args.width.unwrap_or(default_width);
    common.height = args.height.unwrap_or(default_height);
    common.scheduler = scheduler;
    common.num_images_per_prompt = args.images;
    common.eta = args.eta;
    common.guidance_rescale = args.guidance_rescale;
    let request = match (image, mask) {
        (None, _) => Request::TextToImage(common),
        (Some(image), None) => Request::ImageToImage(ImageToImage {
            request: common,
            image,
            strength: args.strength,
        }),
        (Some(image), Some(mask)) => Request::Inpaint(Inpaint {
            request: common,
            image,
            mask,
            strength: args.strength,
        }),
    };

    let mut observer = CliObserver {
        dump: args.dump.is_some().then(HashMap::new),
    };
    let cancel = AtomicBool::new(false);
    let generated = request.run(&model, &mut observer, &cancel)?;
    eprintln!();
    if generated.prompt_truncated {
        eprintln!("note: the prompt is longer than the text encoder's 77 tokens and was truncated");
    }
    let paths = output_paths(&args.out, generated.images.len(), format);
    for (image, path) in generated.images.iter().zip(&paths) {
        let bytes = encode(image, generated.width, generated.height, format)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let (Some(dir), Some(tensors)) = (&args.dump, observer.dump) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("dump.safetensors");
        sie_engine::candle_core::safetensors::save(&tensors, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(flags) = &generated.nsfw_content_detected {
        println!("nsfw_content_detected: {flags:?}");
    }
    println!("scheduler: {}", generated.scheduler);
    println!("seed: {}", generated.seed);
    Ok(())
}

/// An input image file as the API would take it: PNG, JPEG or WebP, upright, RGB.
fn read_image(path: &Path) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rgb = InputImage::from_bytes(bytes)
        .and_then(|image| image.to_rgb())
        .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
    Ok(RgbImage::new(
        rgb.width as usize,
        rgb.height as usize,
        rgb.pixels,
    )?)
}

fn output_paths(out: &Path, n: usize, format: ImageFormat) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_owned()];
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| format.extension().into());
    (1..=n)
        .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// Prints progress, and keeps tensors for `--dump`.
struct CliObserver {
    dump: Option<HashMap<String, Tensor>>,
}

impl CliObserver {
    fn keep(&mut self, name: String, t: &Tensor) {
        if let Some(dump) = &mut self.dump {
            if let Ok(t) = t.to_device(&Device::Cpu) {
                dump.insert(name, t);
            }
        }
    }
}

impl Observer for CliObserver {
    fn tokens(&mut self, prompt: &[u32], negative: &[u32]) {
        for (name, ids) in [("prompt_ids", prompt), ("negative_prompt_ids", negative)] {
            if let Ok(t) = Tensor::new(ids, &Device::Cpu) {
                self.keep(name.into(), &t);
            }
        }
    }
    fn text_embeddings(&mut self, embeddings: &Tensor) {
        self.keep("text_embeddings".into(), embeddings);
    }
    fn initial_latents(&mut self, latents: &Tensor) {
        self.keep("latents_0".into(), latents);
    }
    fn step(&mut self, step: usize, steps: usize, latents: &Tensor) {
        eprint!("\rstep {step}/{steps}");
        self.keep(format!("latents_{step}"), latents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Tiny {
        #[command(flatten)]
        args: TinyArgs,
    }

    fn prediction(flag: &str) -> Prediction {
        Tiny::try_parse_from(["tiny", "--out", "/tmp/x", "--prediction-type", flag])
            .unwrap_or_else(|e| panic!("--prediction-type {flag}: {e}"))
            .args
            .prediction_type
    }

    /// `--prediction-type` takes our spelling and diffusers' (`v_prediction`, as
    /// `scheduler_config.json` writes it), and refuses others.
    #[test]
    fn prediction_type_takes_both_spellings_of_v_prediction() {
        assert!(matches!(
            prediction("v-prediction"),
            Prediction::VPrediction
        ));
        assert!(matches!(
            prediction("v_prediction"),
            Prediction::VPrediction
        ));
        assert!(matches!(prediction("epsilon"), Prediction::Epsilon));
        assert!(
            Tiny::try_parse_from(["tiny", "--out", "x", "--prediction-type", "sample"]).is_err()
        );
    }
}
