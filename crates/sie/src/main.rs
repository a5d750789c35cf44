//! `sie`: the command-line binary that wires the crates together.
//!
//! # Layout
//! - `commands/model.rs`: `sie model tiny|check|run`, the engine offline; `commands/pull.rs`:
//!   `sie model pull`, a model directory from the Hugging Face hub.
//! - `commands/generate.rs`: `sie generate`, a client with a progress bar.
//! - `commands/admin.rs`: `sie admin`, accounts, organizations and keys.
//! - `commands/serve.rs`: `sie serve`, the API with in-process workers on SQLite.
//! - `commands/api.rs`: `sie api`, the API alone on PostgreSQL (scale-out).
//! - `commands/worker.rs`: `sie worker`, a GPU node pulling tasks over HTTP.
//! - `commands/common.rs`: store arguments, model loading, worker threads, signals.
//! - `commands/bench.rs`: `sie bench unet|vae|text|pipeline|table`, the engine timed beside PyTorch.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sie",
    version,
    about = "Self-hosted Stable Diffusion 2.1 inference endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with model directories offline: write the tiny model, check a directory, generate.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Submit a prompt to an SIE endpoint, follow its progress, save the images.
    Generate(commands::generate::GenerateArgs),
    /// Accounts, organizations and API keys.
    Admin(commands::admin::AdminArgs),
    /// Serve the SIE API with in-process workers on an embedded SQLite store.
    Serve(commands::serve::ServeArgs),
    /// Serve the SIE API alone on PostgreSQL; run any number behind a load balancer.
    Api(commands::api::ApiArgs),
    /// A GPU node: pull tasks from an API node over HTTP and run them.
    Worker(commands::worker::WorkerArgs),
    /// Benchmarks (timings are never test assertions; see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Keeps freed tensor memory in the process instead of handing it back to the kernel.
///
/// Every tensor op allocates its output afresh. glibc serves blocks over its adaptive mmap
/// threshold with `mmap` and unmaps them on free, so each op paid for page faults and for
/// the kernel zeroing its pages again: on the full-size UNet that was a third of the time
/// (22.0 s per CPU step, 14.8 s with this; peak memory unchanged, measured with
/// `sie bench unet`). Blocks up to 32 MiB (glibc's ceiling for this setting) now come from
/// the heap, which is not trimmed. The memory stays with the process between tasks, which
/// is what a long-running server wants.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(c) => commands::model::run(c),
        Command::Bench(c) => commands::bench::run(c),
        Command::Serve(args) => commands::serve::run(args),
        Command::Api(args) => commands::api::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Admin(args) => commands::admin::run(args),
        Command::Generate(args) => commands::generate::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
