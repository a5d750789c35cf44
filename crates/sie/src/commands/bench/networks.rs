//! Measuring one benchmark: the engine's network (or a whole pipeline run) called once
//! untimed, then timed, and optionally block by block; the result as bench_diffusers.py
//! prints its own.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use sie_engine::bench::{profile, Bench};
use sie_engine::pipeline::{NoObserver, TextToImage};
use sie_engine::{LoadOptions, SafetyCheckerSource, StableDiffusion};

use super::{CommonArgs, PartArgs, PipelineArgs};

/// One warm-up call, then `steps` timed calls of `call`: the median and every time.
fn timed(steps: usize, mut call: impl FnMut() -> Result<()>) -> Result<(f64, Vec<f64>)> {
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
    mut call: impl FnMut() -> Result<()>,
) -> Result<Option<Value>> {
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

/// Times `bench` ([`timed`]), and its blocks when asked ([`block_times`]); the result as
/// bench_diffusers.py prints its own.
fn measure(
    bench: &Bench,
    part: &str,
    args: &PartArgs,
    size: Option<usize>,
    batch: usize,
    blocks: bool,
) -> Result<Value> {
    let call = || Ok(bench.call()?);
    let times = timed(args.steps, call)?;
    let (variant, parameters) = (args.variant.name(), bench.parameters());
    let mut value = result(part, &args.common, variant, size, batch, parameters, times);
    if let Some(blocks) = block_times(blocks, args.steps, call)? {
        value["blocks"] = blocks;
    }
    Ok(value)
}

fn latent_side(size: usize) -> Result<usize> {
    ensure!(
        size % 8 == 0 && size > 0,
        "--size {size} is not a positive multiple of 8"
    );
    Ok(size / 8)
}

pub(super) fn unet(args: &PartArgs, size: usize, batch: usize, blocks: bool) -> Result<Value> {
    let latent = latent_side(size)?;
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let bench = Bench::unet(args.variant.published(), latent, batch, &device, dtype)?;
    measure(&bench, "unet", args, Some(size), batch, blocks)
}

pub(super) fn vae(args: &PartArgs, size: usize, batch: usize, blocks: bool) -> Result<Value> {
    let latent = latent_side(size)?;
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let bench = Bench::vae_decoder(latent, batch, &device, dtype)?;
    measure(&bench, "vae", args, Some(size), batch, blocks)
}

pub(super) fn text(args: &PartArgs, batch: usize) -> Result<Value> {
    let (device, dtype) = (args.common.device()?, args.common.dtype());
    let bench = Bench::text_encoder(batch, &device, dtype)?;
    measure(&bench, "text", args, None, batch, false)
}

pub(super) fn pipeline(args: &PipelineArgs) -> Result<Value> {
    latent_side(args.size)?;
    ensure!(args.runs > 0, "--runs must be at least 1");
    let options = LoadOptions {
        device: args.common.device()?,
        dtype: args.common.dtype(),
        safety_checker: SafetyCheckerSource::Disabled,
        ..LoadOptions::default()
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
        let generated = request.run(&model, &mut NoObserver, &cancel)?;
        times.push(start.elapsed().as_secs_f64());
        scheduler = generated.scheduler.to_string();
    }
    let parameters = model.files.parameters();
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
