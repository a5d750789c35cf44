//! `sie bench unet`: seconds per guided UNet step of the full-size SD 2.1 UNet.
//! (`sie bench queue` lives in `bench_queue.rs`.)
//!
//! Built from the published UNet configs with random weights (no files
//! needed), so the same figure can be measured on any machine and compared
//! with `tools/parity/bench_diffusers.py`, which times diffusers' UNet with the
//! same settings; `--torch PYTHON` runs that script right after and prints both and the
//! ratios. Timings belong in docs/benchmarks.md, never in tests.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use sie_engine::candle_core::{DType, Device, Tensor};
use sie_engine::candle_nn::{VarBuilder, VarMap};
use sie_engine::json_config::JsonConfig;
use sie_engine::model::config::UNetConfig;
use sie_engine::model::unet::UNet;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the full-size UNet (random weights) for one guided step.
    Unet {
        #[arg(long, value_enum, default_value = "2-1-base")]
        variant: Variant,
        /// Image size in pixels (the latent is size/8).
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// UNet batch: 2 is one guided step of one image.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Timed steps after one warm-up step; the median is reported.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Then run diffusers' UNet with the same settings under this Python (a virtualenv
        /// with torch and diffusers), and print both and the ratios.
        #[arg(long, value_name = "PYTHON")]
        torch: Option<std::path::PathBuf>,
    },
    /// Tasks per second through the queue alone (create, lease, complete), no engine.
    Queue {
        /// A scratch PostgreSQL database; without it, SQLite.
        #[arg(long)]
        database_url: Option<String>,
        /// Where the SQLite file goes; a fresh temporary directory when left out.
        #[arg(long, conflicts_with = "database_url")]
        data_dir: Option<std::path::PathBuf>,
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

#[derive(Clone, Copy, ValueEnum)]
pub enum Variant {
    #[value(name = "2-1-base")]
    Base,
    #[value(name = "2-1")]
    V,
}

/// The UNet configs of stabilityai/stable-diffusion-2-1(-base), as published
/// (see tools/parity/published_configs.py for the sources).
fn published_unet(variant: Variant) -> &'static str {
    match variant {
        Variant::Base => include_str!("../../../engine/assets/published/sd21-base-unet.json"),
        Variant::V => include_str!("../../../engine/assets/published/sd21-unet.json"),
    }
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (variant, size, batch, steps, json, torch) = match command {
        BenchCommand::Unet {
            variant,
            size,
            batch,
            steps,
            json,
            torch,
        } => (variant, size, batch, steps, json, torch),
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
    let ours = unet(variant, size, batch, steps)?;
    let Some(python) = torch else {
        print_result(&ours, json);
        return Ok(());
    };
    let theirs = diffusers_unet(&python, variant, size, batch, steps)?;
    let ratio = |key: &str| -> Option<f64> { Some(ours[key].as_f64()? / theirs[key].as_f64()?) };
    let (time, memory) = (ratio("seconds_per_step"), ratio("peak_rss_bytes"));
    if json {
        println!(
            "{}",
            serde_json::json!({"ours": ours, "pytorch": theirs,
                "ratio": {"time": time, "peak_rss": memory}})
        );
    } else {
        print_result(&ours, false);
        println!(
            "-- {}",
            theirs["implementation"].as_str().unwrap_or("diffusers")
        );
        print_result(&theirs, false);
        println!(
            "ratio ours / PyTorch: time {:.2}, peak RSS {:.2} (below 1: ours is faster / smaller)",
            time.unwrap_or(f64::NAN),
            memory.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Runs `tools/parity/bench_diffusers.py` with the same settings; its JSON result.
fn diffusers_unet(
    python: &std::path::Path,
    variant: Variant,
    size: usize,
    batch: usize,
    steps: usize,
) -> anyhow::Result<serde_json::Value> {
    // The script sits in the source tree this binary was built from.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/parity/bench_diffusers.py"
    );
    let threads = sie_engine::candle_core::utils::get_num_threads();
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--variant", variant_name(variant)])
        .args(["--size", &size.to_string(), "--batch", &batch.to_string()])
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {script}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{script} failed ({}); is {} a Python with torch and diffusers?",
        out.status,
        python.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("reading {script}'s result {last:?}"))
}

fn variant_name(variant: Variant) -> &'static str {
    match variant {
        Variant::Base => "2-1-base",
        Variant::V => "2-1",
    }
}

fn print_result(result: &serde_json::Value, json: bool) {
    if json {
        println!("{result}");
        return;
    }
    println!("UNet parameters: {}", result["parameters"]);
    println!("threads: {}", result["threads"]);
    println!(
        "seconds per step (median of {}): {:.3}",
        result["all_seconds"].as_array().map_or(0, |a| a.len()),
        result["seconds_per_step"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "peak RSS: {:.2} GB",
        result["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e9
    );
}

/// Times our UNet; the result as `bench_diffusers.py` prints its own.
fn unet(
    variant: Variant,
    size: usize,
    batch: usize,
    steps: usize,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        size % 8 == 0 && size > 0,
        "--size {size} is not a positive multiple of 8"
    );
    anyhow::ensure!(steps > 0, "--steps must be at least 1");
    let config = UNetConfig::from_config(&JsonConfig::from_json(
        "unet/config.json".as_ref(),
        published_unet(variant),
    )?)?;
    let device = Device::Cpu;
    // Random weights from candle's initialisers. They come as trainable `Var`s, and candle
    // keeps the whole autograd graph of a forward pass alive for those (11 GB at 512x512),
    // so the UNet that is timed is rebuilt on detached copies, as a loaded checkpoint is.
    let varmap = VarMap::new();
    new_unet_on(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        &config,
    )?;
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the weight map's lock is poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    drop(varmap);
    let parameters: usize = weights.values().map(|t| t.elem_count()).sum();
    let unet = new_unet_on(
        VarBuilder::from_tensors(weights, DType::F32, &device),
        &config,
    )?;

    let latent = size / 8;
    let xs = Tensor::randn(
        0f32,
        1f32,
        (batch, config.in_channels, latent, latent),
        &device,
    )?;
    let context = Tensor::randn(0f32, 1f32, (batch, 77, config.cross_attention_dim), &device)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let start = Instant::now();
        let out = unet.forward(&xs, 999.0, &context)?;
        out.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    // As Python's statistics.median, which the PyTorch side reports: the mean of the middle
    // two for an even count.
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 0 {
        (times[mid - 1] + times[mid]) / 2.0
    } else {
        times[mid]
    };
    let peak = peak_rss_bytes();
    let threads = sie_engine::candle_core::utils::get_num_threads();
    Ok(serde_json::json!({
        "implementation": "sie (candle)",
        "variant": variant_name(variant),
        "size": size,
        "batch": batch,
        "threads": threads,
        "parameters": parameters,
        "seconds_per_step": median,
        "all_seconds": times,
        "peak_rss_bytes": peak,
    }))
}

fn new_unet_on(vb: VarBuilder, config: &UNetConfig) -> anyhow::Result<UNet> {
    UNet::new(vb, config).context("building the UNet")
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
