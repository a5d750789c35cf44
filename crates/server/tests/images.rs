//! Image-to-image and inpainting through the HTTP API (SPEC 1.1's `image`, `mask_image`,
//! `strength` and `PIPELINE`), against the in-process app with workers running the tiny
//! model (and the tiny 9-channel inpainting model): tasks that succeed with images of the
//! requested size, and the refusals that name the field.

mod common;

use base64::Engine as _;
use common::{png_base64, problem, spawn_app, Options};
use serde_json::{json, Value};

/// The (width, height) of every image of a finished task.
fn sizes(done: &Value) -> Vec<(u32, u32)> {
    done["modelOutputs"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            (img.width(), img.height())
        })
        .collect()
}

fn img2img(image: String, extra: Value) -> Value {
    let mut body = json!({
        "modelInputs": {"prompt": "A salad, in watercolour", "image": image,
                        "num_inference_steps": 4, "strength": 0.5, "seed": 3},
        "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline", "SCHEDULER": "DDIMScheduler"}
    });
    for (k, v) in extra.as_object().unwrap() {
        body["modelInputs"][k] = v.clone();
    }
    body
}

fn inpaint(image: String, mask: String, extra: Value) -> Value {
    let mut body = img2img(image, extra);
    body["modelInputs"]["mask_image"] = json!(mask);
    body["callInputs"]["PIPELINE"] = json!("StableDiffusionInpaintPipeline");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn image_to_image_and_inpainting_succeed_at_the_requested_size() {
    let app = spawn_app(Options::default().without_checker()).await;
    let a = app
        .submit(img2img(
            png_base64(100, 90),
            json!({"width": 64, "height": 72, "num_images_per_prompt": 2}),
        ))
        .await;
    // A mask of another size than the image (and the output) is resized, not refused.
    let b = app
        .submit(inpaint(
            png_base64(80, 80),
            png_base64(30, 20),
            json!({"width": 72, "height": 64}),
        ))
        .await;
    let a = app.finish(&a).await;
    assert_eq!(a["status"], "success", "{a}");
    assert_eq!(sizes(&a), vec![(64, 72), (64, 72)]);
    let meta = &a["modelOutputs"]["$meta"];
    assert_eq!(meta["PIPELINE"], "StableDiffusionImg2ImgPipeline");
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(64), Some(72))
    );
    let b = app.finish(&b).await;
    assert_eq!(b["status"], "success", "{b}");
    assert_eq!(sizes(&b), vec![(72, 64)]);
    assert_eq!(
        b["modelOutputs"]["$meta"]["PIPELINE"],
        "StableDiffusionInpaintPipeline"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_width_and_height_image_to_image_takes_the_images_size_rounded_down_to_8() {
    let app = spawn_app(Options::default().without_checker()).await;
    let a = app.submit(img2img(png_base64(75, 70), json!({}))).await;
    let a = app.finish(&a).await;
    assert_eq!(a["status"], "success", "{a}");
    assert_eq!(sizes(&a), vec![(72, 64)]);

    // The same request gives the same image: the seed and the image decide it.
    let b = app.submit(img2img(png_base64(75, 70), json!({}))).await;
    let b = app.finish(&b).await;
    assert_eq!(a["modelOutputs"]["images"], b["modelOutputs"]["images"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nine_channel_inpainting_worker_runs_inpainting() {
    let app = spawn_app(Options::default().inpainting()).await;
    let task = app
        .submit(inpaint(
            png_base64(64, 64),
            png_base64(64, 64),
            json!({"strength": 1.0, "width": 64, "height": 64}),
        ))
        .await;
    let done = app.finish(&task).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(sizes(&done), vec![(64, 64)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_image_inputs_are_refused_naming_the_field() {
    let app = spawn_app(Options::idle()).await;
    let png = || png_base64(64, 64);
    let mut no_image = img2img(png(), json!({}));
    no_image["modelInputs"]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let mut no_mask = inpaint(png(), png(), json!({}));
    no_mask["modelInputs"]
        .as_object_mut()
        .unwrap()
        .remove("mask_image");
    let cases = [
        (
            no_image,
            "missing_field",
            "modelInputs.image",
            "is required",
        ),
        (
            no_mask,
            "missing_field",
            "modelInputs.mask_image",
            "is required",
        ),
        (
            img2img("bm90IGFuIGltYWdl".into(), json!({})),
            "invalid_image",
            "modelInputs.image",
            "PNG, JPEG or WebP",
        ),
        (
            inpaint(png(), "@@@".into(), json!({})),
            "invalid_image",
            "modelInputs.mask_image",
            "base64",
        ),
        (
            img2img(png_base64(4097, 8), json!({"width": 64, "height": 64})),
            "invalid_image",
            "modelInputs.image",
            "4096x4096",
        ),
        (
            img2img(png_base64(1100, 64), json!({})),
            "invalid_image",
            "modelInputs.image",
            "give width and height",
        ),
        (
            img2img(png(), json!({"strength": 1.5})),
            "out_of_range",
            "modelInputs.strength",
            "0..=1",
        ),
        (
            inpaint(png(), png(), json!({"strength": -0.1})),
            "out_of_range",
            "modelInputs.strength",
            "0..=1",
        ),
        (
            img2img(png(), json!({"strength": 0.2})),
            "out_of_range",
            "modelInputs.strength",
            "runs no step",
        ),
        (
            inpaint(png(), png(), json!({"guidance_rescale": 0.7})),
            "invalid_value",
            "modelInputs.guidance_rescale",
            "only used by StableDiffusionPipeline",
        ),
    ];
    for (body, code, field, needle) in cases {
        let (s, v) = problem(app.post(&body.to_string()).await).await;
        assert_eq!((s, v["code"].as_str()), (400, Some(code)), "{field}: {v}");
        assert_eq!(v["field"], field, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(field) && detail.contains(needle), "{v}");
    }

    // An image over the body bound is refused before it is read.
    let huge = "A".repeat(21 << 20);
    let (s, v) = problem(app.post(&img2img(huge, json!({})).to_string()).await).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert_eq!(app.get(&app.base).await["total"], 0, "nothing was queued");
}
