//! `sie bench unet|vae|text|pipeline|table`: how fast the engine runs SD 2.1, beside PyTorch.
//! (`sie bench queue` lives in `bench_queue.rs`.)
//!
//! `unet`, `vae` and `text` build the full-size networks from the published configs
//! (`crates/engine/assets/published/`) with random weights, so they need no files and the
//! same figure can be measured on any machine; `pipeline` times a whole text-to-image run of
//! a model directory. Each times one untimed warm-up call and then reports the median of the
//! timed ones, and the process's peak resident set. `--torch PYTHON` then runs
//! `tools/parity/bench_diffusers.py` with the same settings under that Python and prints
//! both and the ratios. `table` runs every row the performance target names (UNet at 512
//! and 768, VAE decode at 512 and 768, text encoder), each side in a process of its own so
//! each peak is its own, and prints them as a Markdown table. Timings belong in
//! docs/benchmarks.md, never in tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sie_engine::candle_core::{DType, Device, Shape, Tensor};
use sie_engine::candle_nn::var_builder::SimpleBackend;
use sie_engine::candle_nn::VarBuilder;
use sie_engine::json_config::JsonConfig;
use sie_engine::model::clip::ClipTextEncoder;
use sie_engine::model::config::{ClipTextConfig, UNetConfig, VaeConfig};
use sie_engine::model::profile;
use sie_engine::model::unet::UNet;
use sie_engine::model::vae::Vae;
use sie_engine::model::{LoadOptions, SafetyCheckerSource, StableDiffusion};
use sie_engine::pipeline::{NoObserver, TextToImage};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the full-size UNet (random weights): one call of --batch latents.
    Unet {
        #[command(flatten)]
        part: PartArgs,
        /// Image size in pixels (the latent is size/8).
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// UNet batch: 2 is one guided step of one image.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Also time each block (level by level, and the parts of resnets and transformers).
        #[arg(long)]
        blocks: bool,
    },
    /// Time the full-size VAE decoder (random weights): latents to pixels.
    Vae {
        #[command(flatten)]
        part: PartArgs,
        /// Image size in pixels (the latent is size/8).
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Also time each block (level by level, and the parts of the resnets).
        #[arg(long)]
        blocks: bool,
    },
    /// Time the full-size text encoder (random weights) on 77 token ids.
    Text {
        #[command(flatten)]
        part: PartArgs,
        /// 2 is one guided prompt (the prompt and the negative prompt).
        #[arg(long, default_value_t = 2)]
        batch: usize,
    },
    /// Time whole text-to-image runs of a model directory (no safety checker).
    Pipeline(PipelineArgs),
    /// Every row of the performance target, ours and PyTorch's, as a Markdown table.
    Table {
        /// A Python with torch, diffusers and transformers (a virtualenv's bin/python).
        #[arg(long, value_name = "PYTHON")]
        torch: PathBuf,
        /// Timed calls per row after one warm-up call.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Tasks per second through the queue alone (create, lease, complete), no engine.
    Queue {
        /// A scratch PostgreSQL database; without it, SQLite.
        #[arg(long)]
        database_url: Option<String>,
        /// Where the SQLite file goes; a fresh temporary directory when left out.
        #[arg(long, conflicts_with = "database_url")]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 2000)]
        tasks: u64,
        /// Threads creating tasks.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
        producers: u32,
        /// Threads leasing and completing tasks.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: u32,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What every network benchmark takes.
#[derive(Args, Clone)]
pub struct PartArgs {
    #[arg(long, value_enum, default_value = "2-1-base")]
    variant: Variant,
    /// Timed calls after one warm-up call; the median is reported.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Clone)]
pub struct CommonArgs {
    /// `cpu`, or `cuda` for the first GPU (a build with the `cuda` feature).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "float32")]
    dtype: DTypeArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Then run the same with diffusers under this Python (a virtualenv with torch and
    /// diffusers), and print both and the ratios.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct PipelineArgs {
    /// A diffusers-layout model directory.
    #[arg(long)]
    model: PathBuf,
    /// Image size in pixels.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Inference steps of each run.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timed runs, no warm-up run; the median is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[arg(long, default_value = "An oil painting of a salad")]
    prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Variant {
    #[value(name = "2-1-base")]
    Base,
    #[value(name = "2-1")]
    V,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    Float32,
    Float16,
    Bfloat16,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Base => "2-1-base",
            Variant::V => "2-1",
        }
    }

    /// The UNet configs of stabilityai/stable-diffusion-2-1(-base), as published (see
    /// tools/parity/published_configs.py for the sources). The VAE and text-encoder configs
    /// of the two differ only in names and versions, so one file each serves both.
    fn unet_config(self) -> &'static str {
        match self {
            Variant::Base => include_str!("../../../engine/assets/published/sd21-base-unet.json"),
            Variant::V => include_str!("../../../engine/assets/published/sd21-unet.json"),
        }
    }
}

const VAE_CONFIG: &str = include_str!("../../../engine/assets/published/sd21-vae.json");
const TEXT_CONFIG: &str = include_str!("../../../engine/assets/published/sd21-text-encoder.json");

impl CommonArgs {
    fn device(&self) -> anyhow::Result<Device> {
        match self.device {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => Device::new_cuda(0)
                .context("--device cuda needs a build with the `cuda` feature and a GPU"),
        }
    }

    fn dtype(&self) -> DType {
        match self.dtype {
            DTypeArg::Float32 => DType::F32,
            DTypeArg::Float16 => DType::F16,
            DTypeArg::Bfloat16 => DType::BF16,
        }
    }

    /// The device and dtype as both command lines, and both sides' results, spell them.
    fn names(&self) -> (&'static str, &'static str) {
        let device = match self.device {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Cuda => "cuda",
        };
        let dtype = match self.dtype {
            DTypeArg::Float32 => "float32",
            DTypeArg::Float16 => "float16",
            DTypeArg::Bfloat16 => "bfloat16",
        };
        (device, dtype)
    }

    /// The options every side is given.
    fn flags(&self) -> Vec<String> {
        let (device, dtype) = self.names();
        strings(&["--device", device, "--dtype", dtype])
    }
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (ours, common, flags) = match command {
        BenchCommand::Unet {
            part,
            size,
            batch,
            blocks,
        } => {
            let flags = part_flags("unet", &part, Some(size), batch);
            (unet(&part, size, batch, blocks)?, part.common, flags)
        }
        BenchCommand::Vae {
            part,
            size,
            batch,
            blocks,
        } => {
            let flags = part_flags("vae", &part, Some(size), batch);
            (vae(&part, size, batch, blocks)?, part.common, flags)
        }
        BenchCommand::Text { part, batch } => {
            let flags = part_flags("text", &part, None, batch);
            (text(&part, batch)?, part.common, flags)
        }
        BenchCommand::Pipeline(args) => {
            let mut flags = strings(&["pipeline", "--model"]);
            flags.push(args.model.display().to_string());
            flags.extend(strings(&[
                "--size",
                &args.size.to_string(),
                "--steps",
                &args.steps.to_string(),
                "--runs",
                &args.runs.to_string(),
                "--prompt",
                &args.prompt,
                "--seed",
                &args.seed.to_string(),
                "--guidance",
                &args.guidance.to_string(),
            ]));
            flags.extend(args.common.flags());
            (pipeline(&args)?, args.common, flags)
        }
        BenchCommand::Table { torch, steps, json } => return table(&torch, steps, json),
        BenchCommand::Queue {
            database_url,
            data_dir,
            tasks,
            producers,
            workers,
            json,
        } => {
            return super::bench_queue::run(super::bench_queue::QueueBench {
                database_url,
                data_dir,
                tasks,
                producers,
                workers,
                json,
            })
        }
    };
    let Some(python) = &common.torch else {
        print_result(&ours, common.json);
        return Ok(());
    };
    let theirs = diffusers(python, &flags)?;
    let ratios = ratios(&ours, &theirs);
    if common.json {
        println!(
            "{}",
            json!({"ours": ours, "pytorch": theirs, "ratio": ratios})
        );
    } else {
        print_result(&ours, false);
        println!(
            "-- {}",
            theirs["implementation"].as_str().unwrap_or("PyTorch")
        );
        print_result(&theirs, false);
        println!(
            "ratio ours / PyTorch: time {:.2}, peak RSS {:.2} (below 1: ours is faster / smaller)",
            ratios["time"].as_f64().unwrap_or(f64::NAN),
            ratios["peak_rss"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// The bench_diffusers.py (and `sie bench`) command line of one network benchmark.
fn part_flags(part: &str, args: &PartArgs, size: Option<usize>, batch: usize) -> Vec<String> {
    let mut flags = strings(&[part, "--variant", args.variant.name()]);
    if let Some(size) = size {
        flags.extend(strings(&["--size", &size.to_string()]));
    }
    flags.extend(strings(&[
        "--batch",
        &batch.to_string(),
        "--steps",
        &args.steps.to_string(),
    ]));
    flags.extend(args.common.flags());
    flags
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ratios(ours: &Value, theirs: &Value) -> Value {
    let ratio = |key: &str| -> Option<f64> { Some(ours[key].as_f64()? / theirs[key].as_f64()?) };
    json!({"time": ratio("seconds"), "peak_rss": ratio("peak_rss_bytes")})
}

/// Runs `tools/parity/bench_diffusers.py` with `flags` (and this process's thread count);
/// its JSON result.
fn diffusers(python: &Path, flags: &[String]) -> anyhow::Result<Value> {
    // The script sits in the source tree: the one we run in (a checkout's root), else the
    // one this binary was built from.
    let here = Path::new("tools/parity/bench_diffusers.py");
    let built = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/parity/bench_diffusers.py"
    );
    let script = if here.is_file() {
        here.display().to_string()
    } else {
        built.to_string()
    };
    let threads = sie_engine::candle_core::utils::get_num_threads();
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(flags)
        .args(["--threads", &threads.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {script}", python.display()))?;
    ensure!(
        out.status.success(),
        "{script} failed ({}); is {} a Python with torch, diffusers and transformers?",
        out.status,
        python.display()
    );
    last_json(&out.stdout).with_context(|| format!("reading {script}'s result"))
}

fn last_json(stdout: &[u8]) -> anyhow::Result<Value> {
    let stdout = String::from_utf8_lossy(stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("not one JSON object: {last:?}"))
}

fn print_result(result: &Value, json: bool) {
    if json {
        println!("{result}");
        return;
    }
    println!(
        "{} {} ({} parameters, batch {}, size {}, {} {}, {} threads)",
        result["implementation"].as_str().unwrap_or_default(),
        result["part"].as_str().unwrap_or_default(),
        result["parameters"],
        result["batch"],
        result["size"],
        result["device"].as_str().unwrap_or_default(),
        result["dtype"].as_str().unwrap_or_default(),
        result["threads"],
    );
    println!(
        "seconds (median of {}): {:.3}",
        result["all_seconds"].as_array().map_or(0, |a| a.len()),
        result["seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "peak RSS: {:.2} GB",
        result["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e9
    );
    if let Some(blocks) = result["blocks"].as_array() {
        println!("per block (a part/ row is summed over every block of that kind, and is also in its level's row):");
        for b in blocks {
            println!(
                "  {:<32} {:>8.3} s {:>5.1}%  ({} calls)",
                b["block"].as_str().unwrap_or_default(),
                b["seconds_per_call"].as_f64().unwrap_or(f64::NAN),
                100.0 * b["share"].as_f64().unwrap_or(f64::NAN),
                b["calls_per_call"]
            );
        }
    }
}

/// A network on random weights in `dtype` on `device`, and its weights' names and element
/// counts. Each weight is drawn when the network asks for it, from the initialiser the
/// network names (candle's, as `VarMap` would use), on the CPU in f32 whatever the target,
/// so every device and dtype gets the same values. They are plain tensors, not `Var`s:
/// candle keeps a forward pass's whole autograd graph alive for variables (11 GB for a UNet
/// call at 512x512), which a loaded checkpoint never does; and nothing else holds them, so
/// a network that keeps its own copy of a weight (a transposed one) holds the memory a
/// checkpoint load would.
fn random<M>(
    build: impl Fn(VarBuilder) -> sie_engine::candle_core::Result<M>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<(M, Vec<(String, usize)>)> {
    let sizes = std::sync::Arc::new(Mutex::new(Vec::new()));
    let model = build(VarBuilder::from_backend(
        Box::new(Drawn(sizes.clone())),
        dtype,
        device.clone(),
    ))?;
    let sizes = std::mem::take(
        &mut *sizes
            .lock()
            .map_err(|_| anyhow::anyhow!("the weight list's lock is poisoned"))?,
    );
    Ok((model, sizes))
}

/// A weight source that draws each weight from its initialiser when asked, and notes its
/// name and size.
struct Drawn(std::sync::Arc<Mutex<Vec<(String, usize)>>>);

impl SimpleBackend for Drawn {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: sie_engine::candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> sie_engine::candle_core::Result<Tensor> {
        let t = init
            .var(shape, DType::F32, &Device::Cpu)?
            .as_tensor()
            .detach();
        if let Ok(mut sizes) = self.0.lock() {
            sizes.push((name.to_string(), t.elem_count()));
        }
        t.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: DType,
        _: &Device,
    ) -> sie_engine::candle_core::Result<Tensor> {
        sie_engine::candle_core::bail!("{name}: a random weight needs its shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// One warm-up call, then `steps` timed calls of `call`: the median and every time.
fn timed(
    steps: usize,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    ensure!(steps > 0, "--steps must be at least 1");
    call()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        call()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok((median(&times), times))
}

/// With `blocks`, a further `steps` calls with every block timed (the waits for the device
/// that recording adds would otherwise bend the plain timing): each block's seconds per
/// call, and its share of the whole call.
fn block_times(
    blocks: bool,
    steps: usize,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Option<Value>> {
    if !blocks {
        return Ok(None);
    }
    let start = Instant::now();
    profile::start();
    let run = (0..steps).try_for_each(|_| call());
    let entries = profile::finish();
    run?;
    let whole = start.elapsed().as_secs_f64();
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            let seconds = e.total.as_secs_f64();
            json!({
                "block": e.name,
                "seconds_per_call": seconds / steps as f64,
                "share": seconds / whole,
                "calls_per_call": e.calls / steps,
            })
        })
        .collect();
    Ok(Some(Value::Array(rows)))
}

/// As Python's statistics.median, which the PyTorch side reports: the mean of the middle two
/// for an even count.
fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

fn result(
    part: &str,
    common: &CommonArgs,
    variant: &str,
    size: Option<usize>,
    batch: usize,
    parameters: usize,
    (seconds, all): (f64, Vec<f64>),
) -> Value {
    let (device, dtype) = common.names();
    json!({
        "implementation": "sie (candle)",
        "part": part,
        "device": device,
        "dtype": dtype,
        "variant": variant,
        "size": size,
        "batch": batch,
        "threads": sie_engine::candle_core::utils::get_num_threads(),
        "parameters": parameters,
        "seconds": seconds,
        "all_seconds": all,
        "peak_rss_bytes": peak_rss_bytes(),
    })
}

/// What one network benchmark measured, short of the times.
struct Run<'a> {
    part: &'static str,
    args: &'a PartArgs,
    size: Option<usize>,
    batch: usize,
    parameters: usize,
    blocks: bool,
}

impl Run<'_> {
    /// Times `call` ([`timed`]), and its blocks when asked ([`block_times`]); the result as
    /// bench_diffusers.py prints its own.
    fn measure(&self, call: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<Value> {
        let times = timed(self.args.steps, &call)?;
        let mut value = result(
            self.part,
            &self.args.common,
            self.args.variant.name(),
            self.size,
            self.batch,
            self.parameters,
            times,
        );
        if let Some(blocks) = block_times(self.blocks, self.args.steps, &call)? {
            value["blocks"] = blocks;
        }
        Ok(value)
    }
}

fn latent_side(size: usize) -> anyhow::Result<usize> {
    ensure!(
        size % 8 == 0 && size > 0,
        "--size {size} is not a positive multiple of 8"
    );
    Ok(size / 8)
}

/// Reads the result back to the CPU, so a GPU has finished before the clock stops.
fn force(t: &Tensor) -> anyhow::Result<()> {
    t.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    Ok(())
}

fn unet(args: &PartArgs, size: usize, batch: usize, blocks: bool) -> anyhow::Result<Value> {
    let latent = latent_side(size)?;
    let config = UNetConfig::from_config(&JsonConfig::from_json(
        "unet/config.json".as_ref(),
        args.variant.unet_config(),
    )?)?;
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let (unet, sizes) = random(|vb| UNet::new(vb, &config), dtype, &device)?;
    let xs = Tensor::randn(
        0f32,
        1.,
        (batch, config.in_channels, latent, latent),
        &device,
    )?
    .to_dtype(dtype)?;
    let context = Tensor::randn(0f32, 1., (batch, 77, config.cross_attention_dim), &device)?
        .to_dtype(dtype)?;
    let parameters = sizes.iter().map(|(_, n)| n).sum();
    let run = Run {
        part: "unet",
        args,
        size: Some(size),
        batch,
        parameters,
        blocks,
    };
    run.measure(|| force(&unet.forward(&xs, 999.0, &context)?))
}

fn vae(args: &PartArgs, size: usize, batch: usize, blocks: bool) -> anyhow::Result<Value> {
    let latent = latent_side(size)?;
    let config = VaeConfig::from_config(&JsonConfig::from_json(
        "vae/config.json".as_ref(),
        VAE_CONFIG,
    )?)?;
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let (vae, sizes) = random(|vb| Vae::new(vb, &config), dtype, &device)?;
    let z = Tensor::randn(
        0f32,
        1.,
        (batch, config.latent_channels, latent, latent),
        &device,
    )?
    .to_dtype(dtype)?;
    // What decode runs, as the PyTorch side counts it.
    let parameters = sizes
        .iter()
        .filter(|(name, _)| name.starts_with("decoder.") || name.starts_with("post_quant_conv."))
        .map(|(_, n)| n)
        .sum();
    let run = Run {
        part: "vae",
        args,
        size: Some(size),
        batch,
        parameters,
        blocks,
    };
    run.measure(|| force(&vae.decode(&z)?))
}

fn text(args: &PartArgs, batch: usize) -> anyhow::Result<Value> {
    let config = ClipTextConfig::from_config(&JsonConfig::from_json(
        "text_encoder/config.json".as_ref(),
        TEXT_CONFIG,
    )?)?;
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let (encoder, sizes) = random(|vb| ClipTextEncoder::new(vb, &config), dtype, &device)?;
    // Arbitrary token ids (a fixed xorshift sequence): the cost does not depend on them.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let ids: Vec<u32> = (0..batch * config.max_position_embeddings)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % config.vocab_size as u64) as u32
        })
        .collect();
    let ids = Tensor::from_vec(ids, (batch, config.max_position_embeddings), &device)?;
    let parameters = sizes.iter().map(|(_, n)| n).sum();
    let run = Run {
        part: "text",
        args,
        size: None,
        batch,
        parameters,
        blocks: false,
    };
    run.measure(|| force(&encoder.forward(&ids)?))
}

fn pipeline(args: &PipelineArgs) -> anyhow::Result<Value> {
    latent_side(args.size)?;
    ensure!(args.runs > 0, "--runs must be at least 1");
    let options = LoadOptions {
        device: args.common.device()?,
        dtype: args.common.dtype(),
        safety_checker: SafetyCheckerSource::Disabled,
    };
    let start = Instant::now();
    let model = StableDiffusion::load(&args.model, &options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_seconds = start.elapsed().as_secs_f64();
    let mut request = TextToImage::new(&model, args.prompt.clone(), args.seed);
    request.num_inference_steps = args.steps;
    request.guidance_scale = args.guidance;
    request.width = args.size;
    request.height = args.size;
    let cancel = AtomicBool::new(false);
    let mut times = Vec::with_capacity(args.runs);
    let mut scheduler = String::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let generated = model.text_to_image(&request, &mut NoObserver, &cancel)?;
        times.push(start.elapsed().as_secs_f64());
        scheduler = generated.scheduler.to_string();
    }
    let parameters = model.files.unet_weights.parameters
        + model.files.vae_weights.parameters
        + model.files.text_encoder_weights.parameters;
    let mut value = result(
        "pipeline",
        &args.common,
        &args.model.display().to_string(),
        Some(args.size),
        1,
        parameters,
        (median(&times), times),
    );
    value["steps"] = json!(args.steps);
    value["guidance"] = json!(args.guidance);
    value["scheduler"] = json!(scheduler);
    value["load_seconds"] = json!(load_seconds);
    Ok(value)
}

/// `sie bench table`: each row is `sie bench … --json` and bench_diffusers.py in processes of
/// their own, one after the other.
fn table(python: &Path, steps: usize, json: bool) -> anyhow::Result<()> {
    ensure!(steps > 0, "--steps must be at least 1");
    let steps = steps.to_string();
    let rows: [(&str, Vec<&str>); 5] = [
        (
            "UNet step, 512x512 (batch 2)",
            vec!["unet", "--size", "512", "--batch", "2"],
        ),
        (
            "UNet step, 768x768 (batch 2)",
            vec!["unet", "--size", "768", "--batch", "2"],
        ),
        (
            "VAE decode, 512x512",
            vec!["vae", "--size", "512", "--batch", "1"],
        ),
        (
            "VAE decode, 768x768",
            vec!["vae", "--size", "768", "--batch", "1"],
        ),
        ("Text encoder (batch 2)", vec!["text", "--batch", "2"]),
    ];
    let exe = std::env::current_exe().context("finding this sie binary")?;
    let threads = sie_engine::candle_core::utils::get_num_threads().to_string();
    let mut results = Vec::new();
    for (label, row) in &rows {
        let mut flags = strings(row);
        flags.extend(strings(&["--steps", &steps]));
        eprintln!("{label}: sie");
        let out = std::process::Command::new(&exe)
            .arg("bench")
            .args(&flags)
            .arg("--json")
            // The child pools as many threads as this process, whatever its CPU affinity.
            .env("RAYON_NUM_THREADS", &threads)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} bench", exe.display()))?;
        ensure!(
            out.status.success(),
            "sie bench {} failed ({})",
            flags.join(" "),
            out.status
        );
        let ours = last_json(&out.stdout)?;
        eprintln!("{label}: PyTorch");
        let theirs = diffusers(python, &flags)?;
        results.push((label, ratios(&ours, &theirs), ours, theirs));
    }
    if json {
        let rows: Vec<Value> = results
            .iter()
            .map(|(label, ratio, ours, theirs)| {
                json!({"row": label, "ours": ours, "pytorch": theirs, "ratio": ratio})
            })
            .collect();
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    if let Some((_, _, ours, theirs)) = results.first() {
        println!(
            "sie (candle) vs {}, {} threads, f32, random weights, median of {steps} after one warm-up",
            theirs["implementation"].as_str().unwrap_or("PyTorch"),
            ours["threads"]
        );
        println!();
    }
    println!("| | ours, s | PyTorch, s | time ratio | ours, peak RSS GB | PyTorch, peak RSS GB | memory ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, ratio, ours, theirs) in &results {
        let gb = |v: &Value| v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e9;
        let s = |v: &Value| v["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s(ours),
            s(theirs),
            ratio["time"].as_f64().unwrap_or(f64::NAN),
            gb(ours),
            gb(theirs),
            ratio["peak_rss"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// VmHWM from /proc/self/status (Linux): the peak resident set of this process.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
