//! Image-to-image and inpainting on the tiny models against diffusers' own pipelines
//! (fixtures from `tools/parity/make_img2img_fixtures.py`).
//!
//! Image-to-image at strengths 0.3 and 0.8 for LMS, DDIM, PNDM and Euler ancestral, every
//! other scheduler once, several images with DDIM's eta; inpainting with the 9-channel
//! inpainting UNet and with the ordinary 4-channel one, input image and mask each of another
//! size than the output. The same inputs, seed and model must give latents within 1e-4 of
//! diffusers after every step (relative to their scale) and a final image within 1/255 on
//! at least 99.9% of its bytes.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use common::{
    assert_matches_fixture, fixture_request, load_checked, load_tensors, read_json, Recorder,
};
use sie_engine::candle_core::Tensor;
use sie_engine::pipeline::{ImageToImage, Inpaint, Request, RgbImage, TextToImage};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    common::fixtures("img2img")
}

/// A (height, width, 3) uint8 tensor as pixels.
fn pixels(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::new(w, h, t.flatten_all().unwrap().to_vec1().unwrap()).unwrap()
}

fn check_case(name: &str) {
    let meta = read_json(&fixtures().join(format!("{name}.json")));
    let want = load_tensors(&fixtures().join(format!("{name}.safetensors")));
    let r = &meta["request"];
    let key = if name.starts_with("inpaint9") {
        "inpainting"
    } else {
        "epsilon"
    };
    let model = load_checked(key, &fixtures());

    let common = fixture_request(&model, r);
    let strength = r["strength"].as_f64().unwrap();
    let image = pixels(&want["image"]);
    let request = match r["pipeline"].as_str().unwrap() {
        "img2img" => Request::ImageToImage(ImageToImage {
            request: common,
            image,
            strength,
        }),
        "inpaint" => Request::Inpaint(Inpaint {
            request: common,
            image,
            mask: pixels(&want["mask"]),
            strength,
        }),
        other => panic!("{name}: unknown pipeline {other}"),
    };

    let mut recorder = Recorder::default();
    let generated = request
        .run(&model, &mut recorder, &AtomicBool::new(false))
        .unwrap();
    let steps = meta["steps_recorded"].as_u64().unwrap() as usize;
    assert_matches_fixture(name, &recorder, &generated, &want, steps, TOLERANCE);
}

macro_rules! cases {
    ($($test:ident => $name:literal,)*) => {
        $(#[test] fn $test() { check_case($name); })*
    };
}

cases! {
    img2img_lms_03 => "img2img-LMSDiscreteScheduler-0.3",
    img2img_lms_08 => "img2img-LMSDiscreteScheduler-0.8",
    img2img_ddim_03 => "img2img-DDIMScheduler-0.3",
    img2img_ddim_08 => "img2img-DDIMScheduler-0.8",
    img2img_pndm_03 => "img2img-PNDMScheduler-0.3",
    img2img_pndm_08 => "img2img-PNDMScheduler-0.8",
    img2img_euler_ancestral_03 => "img2img-EulerAncestralDiscreteScheduler-0.3",
    img2img_euler_ancestral_08 => "img2img-EulerAncestralDiscreteScheduler-0.8",
    img2img_euler => "img2img-EulerDiscreteScheduler-0.6",
    img2img_heun => "img2img-HeunDiscreteScheduler-0.6",
    img2img_dpm_solver_multistep => "img2img-DPMSolverMultistepScheduler-0.6",
    img2img_unipc => "img2img-UniPCMultistepScheduler-0.6",
    img2img_ddpm => "img2img-DDPMScheduler-0.6",
    img2img_two_images_ddim_eta => "img2img-batch2-eta",
    inpaint_nine_channels_pndm_full_strength => "inpaint9-PNDMScheduler-1.0",
    inpaint_nine_channels_euler_ancestral => "inpaint9-EulerAncestralDiscreteScheduler-0.75",
    inpaint_nine_channels_two_images => "inpaint9-DDIMScheduler-0.8-batch2",
    inpaint_four_channels_ddim_full_strength => "inpaint4-DDIMScheduler-1.0",
    inpaint_four_channels_lms => "inpaint4-LMSDiscreteScheduler-0.7",
    inpaint_four_channels_heun => "inpaint4-HeunDiscreteScheduler-0.8",
    inpaint_four_channels_dpm_solver => "inpaint4-DPMSolverMultistepScheduler-0.5",
}

#[test]
fn an_inpainting_model_refuses_the_other_pipelines() {
    let model = load_checked("inpainting", &fixtures());
    assert_eq!(
        sie_engine::pipeline::pipelines(&model),
        &[sie_engine::pipeline::Pipeline::Inpaint]
    );
    let request = TextToImage::new(&model, "a salad", 1);
    let err = request
        .run(
            &model,
            &mut sie_engine::pipeline::NoObserver,
            &AtomicBool::new(false),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("inpainting") && err.contains("StableDiffusionInpaintPipeline"),
        "{err}"
    );
}

/// Pillow's `resize(size, LANCZOS)`, what diffusers' image processor resizes with, bit for
/// bit: random images up and down, each pass order Pillow 13 picks.
#[test]
fn lanczos_resize_is_pillows() {
    let want = load_tensors(&fixtures().join("resize.safetensors"));
    let cases = read_json(&fixtures().join("resize.json"))["cases"]
        .as_u64()
        .unwrap();
    for i in 0..cases {
        let out = &want[&format!("out_{i}")];
        let (h, w, _) = out.dims3().unwrap();
        let ours = pixels(&want[&format!("in_{i}")]).resized(w, h);
        let reference: Vec<u8> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(ours.pixels() == reference.as_slice(), "case {i}: {w}x{h}");
    }
}
