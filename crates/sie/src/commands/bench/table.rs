//! `sie bench table`: every row of the performance target, ours and PyTorch's, each side
//! in a process of its own, as a Markdown table (or one JSON array).

use std::path::Path;

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use super::strings;
use super::torch::{diffusers, last_json, ratios, stdout_of};

/// `sie bench table`: each row is `sie bench … --json` and bench_diffusers.py in processes of
/// their own, one after the other.
pub(super) fn table(python: &Path, steps: usize, json: bool) -> anyhow::Result<()> {
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
        let mut command = std::process::Command::new(&exe);
        command
            .arg("bench")
            .args(&flags)
            .arg("--json")
            // The child pools as many threads as this process, whatever its CPU affinity.
            .env("RAYON_NUM_THREADS", &threads);
        let stdout = stdout_of(
            &mut command,
            &format!("{} bench", exe.display()),
            |status| format!("sie bench {} failed ({status})", flags.join(" ")),
        )?;
        let ours = last_json(&stdout)?;
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
