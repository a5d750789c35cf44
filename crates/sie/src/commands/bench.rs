//! `sie bench unet`: seconds per guided UNet step of the full-size SD 2.1 UNet.
//! (`sie bench queue` lives in `bench_queue.rs`.)
//!
//! Built from the published UNet configs with random weights (no files
//! needed), so the same figure can be measured on any machine and compared
//! with `tools/parity/bench_diffusers.py`, which times diffusers' UNet with the
//! same settings. Timings belong in docs/benchmarks.md, never in tests.

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
    let (variant, size, batch, steps, json) = match command {
        BenchCommand::Unet {
            variant,
            size,
            batch,
            steps,
            json,
        } => (variant, size, batch, steps, json),
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
    unet(variant, size, batch, steps, json)
}

fn unet(
    variant: Variant,
    size: usize,
    batch: usize,
    steps: usize,
    json: bool,
) -> anyhow::Result<()> {
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
    let median = times[times.len() / 2];
    let peak = peak_rss_bytes();
    let threads = sie_engine::candle_core::utils::get_num_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "implementation": "sie (candle)",
                "variant": match variant { Variant::Base => "2-1-base", Variant::V => "2-1" },
                "size": size,
                "batch": batch,
                "threads": threads,
                "parameters": parameters,
                "seconds_per_step": median,
                "all_seconds": times,
                "peak_rss_bytes": peak,
            })
        );
    } else {
        println!("UNet parameters: {parameters}");
        println!("threads: {threads}");
        println!("seconds per step (median of {steps}): {median:.3}");
        println!("peak RSS: {:.2} GB", peak as f64 / 1e9);
    }
    Ok(())
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
