//! `sie generate "PROMPT" --server URL --org ORG --key KEY --out DIR`: a client for any
//! SIE endpoint (ours or SaladCloud's): submits, shows the queue position and then the
//! steps, and saves the decoded images.
//!
//! It validates nothing itself: the server is the one authority on what is accepted, and
//! its problem `detail` is printed as the error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use serde_json::{json, Map, Value};

#[derive(Args)]
pub struct GenerateArgs {
    prompt: String,
    /// The server's base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    server: String,
    #[arg(long, default_value = "default")]
    org: String,
    /// The API key (or set SIE_API_KEY).
    #[arg(long, env = "SIE_API_KEY", hide_env_values = true)]
    key: String,
    #[arg(long, default_value = ".")]
    out: PathBuf,
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f64>,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    images: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eta: Option<f64>,
    #[arg(long)]
    guidance_rescale: Option<f64>,
    /// A diffusers scheduler class name, or LMS, DDIM, PNDM.
    #[arg(long)]
    scheduler: Option<String>,
    /// Ask for the safety checker (true) or not (false); the endpoint's default otherwise.
    #[arg(long)]
    safety_checker: Option<bool>,
    /// PNG, JPEG or WEBP.
    #[arg(long)]
    format: Option<String>,
    /// Start from this image file (image-to-image; inpainting with --mask). Without --width
    /// and --height the output takes its size, rounded down to multiples of 8.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Inpaint: the mask image file (white = repaint).
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    /// With --image: 0..=1, how far from the image the result may go.
    #[arg(long, requires = "image")]
    strength: Option<f64>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(generate(args))
}

fn body(args: &GenerateArgs) -> anyhow::Result<Value> {
    let read = |path: &PathBuf| -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let base64 = |bytes: &[u8]| json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    let image_bytes = args.image.as_ref().map(read).transpose()?;
    // Without --width/--height the output takes the image's size rounded down to 8 (the
    // server does so for image-to-image; for inpainting it would take the model's size).
    let image_size = match (&args.image, &image_bytes) {
        (Some(path), Some(bytes)) => {
            let (w, h) = sie_api::request::InputImage::from_bytes(bytes.clone())
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?
                .size();
            Some((w / 8 * 8, h / 8 * 8))
        }
        _ => None,
    };
    let image = image_bytes.as_deref().map(base64);
    let mask = args
        .mask
        .as_ref()
        .map(read)
        .transpose()?
        .map(|bytes| base64(&bytes));
    let pipeline = match (&image, &mask) {
        (None, _) => None,
        (Some(_), None) => Some("StableDiffusionImg2ImgPipeline"),
        (Some(_), Some(_)) => Some("StableDiffusionInpaintPipeline"),
    };
    let mut model = Map::new();
    model.insert("prompt".into(), json!(args.prompt));
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            model.insert(key.into(), v);
        }
    };
    put(
        "negative_prompt",
        args.negative_prompt.as_ref().map(|v| json!(v)),
    );
    put("num_inference_steps", args.steps.map(|v| json!(v)));
    put("guidance_scale", args.guidance.map(|v| json!(v)));
    put(
        "width",
        args.width.or(image_size.map(|s| s.0)).map(|v| json!(v)),
    );
    put(
        "height",
        args.height.or(image_size.map(|s| s.1)).map(|v| json!(v)),
    );
    put("num_images_per_prompt", args.images.map(|v| json!(v)));
    put("seed", args.seed.map(|v| json!(v)));
    put("eta", args.eta.map(|v| json!(v)));
    put("guidance_rescale", args.guidance_rescale.map(|v| json!(v)));
    put("strength", args.strength.map(|v| json!(v)));
    put("image", image);
    put("mask_image", mask);
    let mut call = Map::new();
    if let Some(p) = pipeline {
        call.insert("PIPELINE".into(), json!(p));
    }
    if let Some(s) = &args.scheduler {
        call.insert("SCHEDULER".into(), json!(s));
    }
    if let Some(c) = args.safety_checker {
        call.insert("safety_checker".into(), json!(c));
    }
    if let Some(f) = &args.format {
        call.insert("image_format".into(), json!(f));
    }
    Ok(json!({"modelInputs": model, "callInputs": call}))
}

/// The server's words for a failed request: its problem `detail`, else the raw body.
async fn server_error(what: &str, response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or(text);
    anyhow::anyhow!("{what}: the server answered {status}: {detail}")
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!(
        "{}/api/beta/organizations/{}/inference-endpoints/stable-diffusion-2-1",
        args.server.trim_end_matches('/'),
        args.org
    );
    let response = client
        .post(&base)
        .header("Salad-Api-Key", &args.key)
        .json(&body(&args)?)
        .send()
        .await
        .with_context(|| format!("sending the request to {base}"))?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Err(server_error("submitting", response).await);
    }
    let created: Value = response.json().await?;
    let url = created["resultUrl"]
        .as_str()
        .context("the server's answer has no resultUrl")?
        .to_owned();
    // The id names the saved files: keep only what a request id can hold, so a hostile
    // server cannot steer the path.
    let id: String = created["requestId"]
        .as_str()
        .unwrap_or("task")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    eprintln!("submitted {id}");

    let result = loop {
        let response = client
            .get(&url)
            .header("Salad-Api-Key", &args.key)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(server_error("checking the task", response).await);
        }
        let v: Value = response.json().await?;
        match v["status"].as_str() {
            Some("pending") => {
                if let (Some(step), Some(steps)) = (
                    v["progress"]["step"].as_u64(),
                    v["progress"]["steps"].as_u64(),
                ) {
                    let width = 30;
                    let done = (step.min(steps) * width / steps.max(1)) as usize;
                    eprint!(
                        "\r[{}{}] step {step}/{steps}   ",
                        "#".repeat(done),
                        ".".repeat(width as usize - done)
                    );
                } else if let Some(position) = v["queuePosition"].as_u64() {
                    eprint!("\rqueued, position {position}   ");
                } else {
                    eprint!("\rstarting...   ");
                }
                std::io::stderr().flush()?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some("success") => break v,
            Some("failed") => {
                eprintln!();
                bail!(
                    "the task failed ({}): {}",
                    v["error"]["code"].as_str().unwrap_or("unknown"),
                    v["error"]["message"].as_str().unwrap_or("")
                );
            }
            _ => bail!("unexpected answer from {url}: {v}"),
        }
    };
    eprintln!();
    let outputs = &result["modelOutputs"];
    let extension = match outputs["$meta"]["image_format"].as_str() {
        Some("image/jpeg") => "jpg",
        Some("image/webp") => "webp",
        _ => "png",
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let images = outputs["images"]
        .as_array()
        .context("the result has no images")?;
    for (i, image) in images.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(image.as_str().unwrap_or_default())
            .context("an image is not valid base64")?;
        let path = args.out.join(format!("{id}-{}.{extension}", i + 1));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("seed: {}", outputs["seed"]);
    if !outputs["nsfw_content_detected"].is_null() {
        println!(
            "nsfw_content_detected: {}",
            outputs["nsfw_content_detected"]
        );
    }
    Ok(())
}
