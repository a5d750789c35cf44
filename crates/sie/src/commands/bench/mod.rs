//! `sie bench unet|vae|text|pipeline|table|throughput`: how fast the engine runs SD 2.1,
//! beside PyTorch. (`sie bench queue` lives in `bench_queue.rs`; `throughput.rs` measures the
//! whole service with concurrent requests.)
//!
//! `unet`, `vae` and `text` time the engine's full-size networks of the published configs on
//! random weights (`sie_engine::bench`), so they need no files and the same figure can be
//! measured on any machine; `pipeline` times a whole text-to-image run of a model directory.
//! Each times one untimed warm-up call and then reports the median of the timed ones, and
//! the process's peak resident set. `--torch PYTHON` then runs
//! `tools/parity/bench_diffusers.py` with the same settings under that Python and prints
//! both and the ratios. `table` runs every row the performance target names (UNet at 512
//! and 768, VAE decode at 512 and 768, text encoder), each side in a process of its own so
//! each peak is its own, and prints them as a Markdown table. Timings belong in
//! docs/benchmarks.md, never in tests.
//!
//! One file per concern: this one holds the command line and prints a result;
//! `networks.rs` measures each benchmark, `torch.rs` runs the PyTorch side, `table.rs` the
//! table.

mod networks;
mod table;
mod throughput;
mod torch;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sie_engine::candle_core::{DType, Device};

use networks::{pipeline, text, unet, vae};

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
    /// Images per second and latency of concurrent requests through the service (queue,
    /// worker, step-level batching), beside diffusers running them one after another.
    Throughput(throughput::ThroughputArgs),
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

    /// The engine's published UNet of this variant.
    fn published(self) -> sie_engine::bench::Variant {
        match self {
            Variant::Base => sie_engine::bench::Variant::Sd21Base,
            Variant::V => sie_engine::bench::Variant::Sd21,
        }
    }
}

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
            let mut flags =
                pipeline_flags(&args.model, args.size, args.steps, args.runs, args.guidance);
            flags.extend(strings(&[
                "--prompt",
                &args.prompt,
                "--seed",
                &args.seed.to_string(),
            ]));
            flags.extend(args.common.flags());
            (pipeline(&args)?, args.common, flags)
        }
        BenchCommand::Table { torch, steps, json } => return table::table(&torch, steps, json),
        BenchCommand::Throughput(args) => return throughput::run(args),
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
    let theirs = torch::diffusers(python, &flags)?;
    let ratios = torch::ratios(&ours, &theirs);
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

/// The bench_diffusers.py command line of a whole-pipeline benchmark (prompt and seed left
/// to the caller).
fn pipeline_flags(
    model: &std::path::Path,
    size: usize,
    steps: usize,
    runs: usize,
    guidance: f64,
) -> Vec<String> {
    let mut flags = strings(&["pipeline", "--model"]);
    flags.push(model.display().to_string());
    flags.extend(strings(&[
        "--size",
        &size.to_string(),
        "--steps",
        &steps.to_string(),
        "--runs",
        &runs.to_string(),
        "--guidance",
        &guidance.to_string(),
    ]));
    flags
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

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
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
