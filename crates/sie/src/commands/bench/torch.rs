//! The PyTorch side: `tools/parity/bench_diffusers.py` run under the Python `--torch`
//! names, with the same flags, and the ratios of the two results; and how either side runs
//! as a process of its own (`table.rs` runs this binary that way).

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub(super) fn ratios(ours: &Value, theirs: &Value) -> Value {
    let ratio = |key: &str| -> Option<f64> { Some(ours[key].as_f64()? / theirs[key].as_f64()?) };
    json!({"time": ratio("seconds"), "peak_rss": ratio("peak_rss_bytes")})
}

/// Runs `tools/parity/bench_diffusers.py` with `flags` (and this process's thread count);
/// its JSON result.
pub(super) fn diffusers(python: &Path, flags: &[String]) -> anyhow::Result<Value> {
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
    let mut command = Command::new(python);
    command
        .arg(&script)
        .args(flags)
        .args(["--threads", &threads.to_string()]);
    let stdout = stdout_of(
        &mut command,
        &format!("{} {script}", python.display()),
        |status| {
            format!(
            "{script} failed ({status}); is {} a Python with torch, diffusers and transformers?",
            python.display()
        )
        },
    )?;
    last_json(&stdout).with_context(|| format!("reading {script}'s result"))
}

/// Runs `command` with its stderr shown as it comes; its stdout, once it has exited
/// successfully. `running` names it when it cannot start; `failed` words a failure.
pub(super) fn stdout_of(
    command: &mut Command,
    running: &str,
    failed: impl FnOnce(ExitStatus) -> String,
) -> anyhow::Result<Vec<u8>> {
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {running}"))?;
    if !out.status.success() {
        bail!(failed(out.status));
    }
    Ok(out.stdout)
}

pub(super) fn last_json(stdout: &[u8]) -> anyhow::Result<Value> {
    let stdout = String::from_utf8_lossy(stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("not one JSON object: {last:?}"))
}
