//! The create-task body as clients send it: the seed document's example, defaults,
//! every kind of refusal, and the queue round trip.

use base64::Engine as _;
use serde_json::{json, Value};
use sie_api::request::{CreateTask, ImageFormat, Pipeline, SchedulerKind};
use sie_api::SEED_EXAMPLE;

fn refuse(body: serde_json::Value) -> sie_api::RequestError {
    CreateTask::parse(body.to_string().as_bytes()).expect_err("should be refused")
}

/// `img` as a PNG, base64.
fn base64_png(img: image::DynamicImage) -> String {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn png_base64(w: u32, h: u32) -> String {
    base64_png(image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])).into())
}

#[test]
fn the_seed_example_parses() {
    let t = CreateTask::parse(SEED_EXAMPLE.as_bytes()).unwrap();
    let m = &t.model_inputs;
    assert_eq!(m.prompt.as_str(), "An oil painting of a salad");
    assert_eq!(m.num_inference_steps.get(), 50);
    assert_eq!(m.guidance_scale.get(), 20.0);
    assert_eq!(m.width.map(|d| d.get()), Some(512));
    assert_eq!(m.height.map(|d| d.get()), Some(512));
    assert_eq!(t.call_inputs.pipeline, Pipeline::Text2Image);
    assert_eq!(t.call_inputs.scheduler, Some(SchedulerKind::LmsDiscrete));
    assert_eq!(t.call_inputs.safety_checker, Some(true));
    assert_eq!(t.call_inputs.image_format, ImageFormat::Png);
}

#[test]
fn defaults_follow_the_spec() {
    let t = CreateTask::parse(br#"{"modelInputs": {"prompt": "x"}}"#).unwrap();
    let m = &t.model_inputs;
    assert_eq!(m.negative_prompt, "");
    assert_eq!(m.num_inference_steps.get(), 50);
    assert_eq!(m.guidance_scale.get(), 7.5);
    assert_eq!((m.width, m.height), (None, None));
    assert_eq!(m.num_images_per_prompt.get(), 1);
    assert_eq!(m.seed, None);
    assert_eq!(
        (m.eta.get(), m.guidance_rescale.get(), m.strength.get()),
        (0.0, 0.0, 0.8)
    );
    assert_eq!(t.call_inputs.scheduler, None);
    assert_eq!(t.call_inputs.safety_checker, None);
}

#[test]
fn aliases_and_spellings() {
    for (name, want) in [
        ("LMS", SchedulerKind::LmsDiscrete),
        ("DDIM", SchedulerKind::Ddim),
        ("PNDM", SchedulerKind::Pndm),
    ] {
        let t = CreateTask::parse(
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"SCHEDULER": name}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(t.call_inputs.scheduler, Some(want));
    }
    for (value, want) in [
        (json!(true), true),
        (json!("FALSE"), false),
        (json!("True"), true),
    ] {
        let t = CreateTask::parse(
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"safety_checker": value}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(t.call_inputs.safety_checker, Some(want));
    }
    let t = CreateTask::parse(
        json!({"modelInputs": {"prompt": "x"}, "callInputs": {"image_format": "webp"}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(t.call_inputs.image_format, ImageFormat::Webp);
}

#[test]
fn bad_json_names_line_and_column() {
    let e = CreateTask::parse(b"{\n  \"modelInputs\": {\"prompt\": \"x\",}\n}").unwrap_err();
    assert_eq!(e.code, "invalid_json");
    assert!(e.message.contains("line 2"), "{}", e.message);
    assert!(e.message.contains("column"), "{}", e.message);
    let e = CreateTask::parse(b"[1, 2]").unwrap_err();
    assert_eq!(e.code, "invalid_body");
}

#[test]
fn every_refusal_names_the_field_and_what_is_accepted() {
    let cases = [
        (
            json!({"modelInputs": {"prompt": "x", "stepz": 3}}),
            "unknown_field",
            "modelInputs.stepz",
            "accepted: prompt",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "extra": 1}),
            "unknown_field",
            "extra",
            "accepted: modelInputs, callInputs",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"scheduler": "DDIM"}}),
            "unknown_field",
            "callInputs.scheduler",
            "SCHEDULER",
        ),
        (
            json!({"callInputs": {}}),
            "missing_field",
            "modelInputs",
            "required",
        ),
        (
            json!({"modelInputs": {}}),
            "missing_field",
            "modelInputs.prompt",
            "required",
        ),
        (
            json!({"modelInputs": {"prompt": "  "}}),
            "invalid_value",
            "modelInputs.prompt",
            "empty",
        ),
        (
            json!({"modelInputs": {"prompt": 5}}),
            "wrong_type",
            "modelInputs.prompt",
            "a string",
        ),
        (
            json!({"modelInputs": {"prompt": "a".repeat(8193)}}),
            "out_of_range",
            "modelInputs.prompt",
            "at most 8192 bytes",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "negative_prompt": "b".repeat(8193)}}),
            "out_of_range",
            "modelInputs.negative_prompt",
            "at most 8192 bytes",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "num_inference_steps": "50"}}),
            "wrong_type",
            "modelInputs.num_inference_steps",
            "an integer",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "num_inference_steps": 2.5}}),
            "wrong_type",
            "modelInputs.num_inference_steps",
            "an integer",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "num_inference_steps": 151}}),
            "out_of_range",
            "modelInputs.num_inference_steps",
            "1..=150",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "num_inference_steps": 0}}),
            "out_of_range",
            "modelInputs.num_inference_steps",
            "1..=150",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "guidance_scale": 50.5}}),
            "out_of_range",
            "modelInputs.guidance_scale",
            "0..=50",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "width": 500}}),
            "invalid_value",
            "modelInputs.width",
            "use 496 or 504",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "height": 2048}}),
            "out_of_range",
            "modelInputs.height",
            "64 to 1024",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "num_images_per_prompt": 9}}),
            "out_of_range",
            "modelInputs.num_images_per_prompt",
            "1..=8",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "seed": -1}}),
            "out_of_range",
            "modelInputs.seed",
            "negative",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "seed": 9223372036854775808u64}}),
            "out_of_range",
            "modelInputs.seed",
            "9223372036854775807",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "eta": 1.5}}),
            "out_of_range",
            "modelInputs.eta",
            "0..=1",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "guidance_rescale": -0.1}}),
            "out_of_range",
            "modelInputs.guidance_rescale",
            "0..=1",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"SCHEDULER": "KarrasVe"}}),
            "invalid_value",
            "callInputs.SCHEDULER",
            "UniPCMultistepScheduler",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"PIPELINE": "StableDiffusionXLPipeline"}}),
            "invalid_value",
            "callInputs.PIPELINE",
            "StableDiffusionInpaintPipeline",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"safety_checker": "yes"}}),
            "wrong_type",
            "callInputs.safety_checker",
            "\"true\" or \"false\"",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"image_format": "GIF"}}),
            "invalid_value",
            "callInputs.image_format",
            "PNG, JPEG, WEBP",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": "fast"}),
            "wrong_type",
            "callInputs",
            "an object",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "image": "!!!"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}),
            "invalid_image",
            "modelInputs.image",
            "base64",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "image": "aGVsbG8="}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}),
            "invalid_image",
            "modelInputs.image",
            "PNG, JPEG or WebP",
        ),
        (
            json!({"modelInputs": {"prompt": "x"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}),
            "missing_field",
            "modelInputs.image",
            "required",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "image": png_base64(8, 8)}}),
            "invalid_value",
            "modelInputs.image",
            "PIPELINE",
        ),
        (
            json!({"modelInputs": {"prompt": "x", "image": png_base64(8, 8)}, "callInputs": {"PIPELINE": "StableDiffusionInpaintPipeline"}}),
            "missing_field",
            "modelInputs.mask_image",
            "required",
        ),
    ];
    for (body, code, field, hint) in cases {
        let e = refuse(body.clone());
        assert_eq!(e.code, code, "{body}: {}", e.message);
        assert_eq!(e.field.as_deref(), Some(field), "{body}: {}", e.message);
        assert!(
            e.message.contains(hint),
            "{body}: {:?} lacks {hint:?}",
            e.message
        );
        let problem = e.to_problem();
        assert_eq!(problem.status, 400);
        assert_eq!(problem.code, code);
    }
}

#[test]
fn images_decode_and_data_urls_are_accepted() {
    let png = png_base64(72, 80);
    let t = CreateTask::parse(
        json!({
            "modelInputs": {"prompt": "x", "image": format!("data:image/png;base64,{png}"), "mask_image": png, "strength": 0.5},
            "callInputs": {"PIPELINE": "StableDiffusionInpaintPipeline"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(t.model_inputs.image.as_ref().unwrap().size(), (72, 80));
    assert_eq!(t.model_inputs.strength.get(), 0.5);
}

#[test]
fn the_stored_form_round_trips_and_is_validated_again() {
    let png = png_base64(8, 8);
    let t = CreateTask::parse(
        json!({
            "modelInputs": {"prompt": "x", "seed": 42, "width": 64, "height": 64, "image": png},
            "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline", "SCHEDULER": "DDIM", "image_format": "jpeg"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let stored = serde_json::to_string(&t).unwrap();
    let back: CreateTask = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, t);
    // A stored request edited into an invalid one does not load.
    let tampered = stored.replace("\"num_inference_steps\":50", "\"num_inference_steps\":500");
    assert_ne!(tampered, stored);
    let e = serde_json::from_str::<CreateTask>(&tampered).unwrap_err();
    assert!(e.to_string().contains("1..=150"), "{e}");
}

#[test]
fn strength_belongs_to_the_image_pipelines() {
    let e = refuse(json!({"modelInputs": {"prompt": "x", "strength": 0.3}}));
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("invalid_value", Some("modelInputs.strength"))
    );
    assert!(
        e.message.contains("StableDiffusionImg2ImgPipeline"),
        "{}",
        e.message
    );
    // null counts as absent, as for every field.
    assert!(CreateTask::parse(br#"{"modelInputs": {"prompt": "x", "strength": null}}"#).is_ok());
}

#[test]
fn a_key_given_twice_is_refused_naming_it() {
    let e = CreateTask::parse(br#"{"modelInputs": {"prompt": "x", "seed": 1, "seed": 2}}"#)
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("duplicate_field", Some("modelInputs.seed"))
    );
    assert!(
        e.message
            .starts_with("modelInputs.seed appears twice (line 1, column"),
        "{}",
        e.message
    );
}

#[test]
fn everything_but_the_pixels_is_decided_before_decoding() {
    // An image that would not decode: parsing keeps it as text, so what needs no pixels
    // (here, the pipeline it asks for) can be refused first.
    let body = json!({
        "modelInputs": {"prompt": "x", "image": "bm90IGFuIGltYWdl"},
        "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline", "SCHEDULER": "DDIM"}
    });
    let undecoded = sie_api::Undecoded::parse(body.to_string().as_bytes()).unwrap();
    assert!(undecoded.has_images());
    assert_eq!(undecoded.needs().pipeline, Pipeline::Image2Image);
    assert_eq!(undecoded.needs().scheduler, Some(SchedulerKind::Ddim));
    let e = undecoded.decode().unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("invalid_image", Some("modelInputs.image"))
    );
    let plain = sie_api::Undecoded::parse(br#"{"modelInputs": {"prompt": "x"}}"#).unwrap();
    assert!(!plain.has_images());
}

/// A PNG of `w`x`h` 16-bit RGBA pixels of one colour, base64.
fn png16_base64(w: u32, h: u32) -> String {
    let img =
        image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(w, h, image::Rgba([1, 2, 3, 4]));
    base64_png(image::DynamicImage::ImageRgba16(img))
}

#[test]
fn the_largest_image_decodes_within_the_limits_and_a_larger_one_is_refused() {
    let body = |png: String| {
        json!({
            "modelInputs": {"prompt": "x", "image": png, "width": 512, "height": 512},
            "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}
        })
        .to_string()
    };
    let t = CreateTask::parse(body(png16_base64(4096, 4096)).as_bytes()).unwrap();
    assert_eq!(t.model_inputs.image.unwrap().size(), (4096, 4096));
    let e = CreateTask::parse(body(png16_base64(4097, 8)).as_bytes()).unwrap_err();
    assert_eq!(e.code, "invalid_image");
    assert!(e.message.contains("4096x4096"), "{}", e.message);
}

fn img2img_body(image: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "modelInputs": {"prompt": "x", "image": image},
        "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}
    });
    for (k, v) in extra.as_object().unwrap() {
        body["modelInputs"][k] = v.clone();
    }
    body.to_string().into_bytes()
}

#[test]
fn without_width_and_height_image_to_image_takes_the_images_size_rounded_down_to_8() {
    let t = CreateTask::parse(&img2img_body(&png_base64(75, 70), json!({}))).unwrap();
    let m = &t.model_inputs;
    assert_eq!(
        (m.width.map(|d| d.get()), m.height.map(|d| d.get())),
        (Some(72), Some(64))
    );
    // Each side on its own, as diffusers' get_default_height_width.
    let t = CreateTask::parse(&img2img_body(&png_base64(75, 70), json!({"width": 128}))).unwrap();
    let m = &t.model_inputs;
    assert_eq!(
        (m.width.map(|d| d.get()), m.height.map(|d| d.get())),
        (Some(128), Some(64))
    );
    // Inpainting, as in diffusers, takes the model's native size instead (the worker's).
    let mut body: Value =
        serde_json::from_slice(&img2img_body(&png_base64(75, 70), json!({}))).unwrap();
    body["modelInputs"]["mask_image"] = body["modelInputs"]["image"].clone();
    body["callInputs"]["PIPELINE"] = json!("StableDiffusionInpaintPipeline");
    let t = CreateTask::parse(body.to_string().as_bytes()).unwrap();
    assert_eq!((t.model_inputs.width, t.model_inputs.height), (None, None));
    // An image whose rounded size is out of range needs width and height.
    for (w, h) in [(1100, 64), (64, 60)] {
        let e = CreateTask::parse(&img2img_body(&png_base64(w, h), json!({}))).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_image", Some("modelInputs.image"))
        );
        assert!(e.message.contains("give width and height"), "{}", e.message);
    }
}

#[test]
fn a_strength_that_runs_no_step_is_refused() {
    let png = png_base64(64, 64);
    for (steps, strength) in [(10, 0.05), (4, 0.2), (1, 0.99), (3, 0.0)] {
        let body = img2img_body(
            &png,
            json!({"num_inference_steps": steps, "strength": strength}),
        );
        let e = CreateTask::parse(&body).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("out_of_range", Some("modelInputs.strength")),
            "{steps} {strength}"
        );
        assert!(e.message.contains("runs no step"), "{}", e.message);
    }
    for (steps, strength) in [(10, 0.1), (4, 0.25), (1, 1.0), (50, 0.8)] {
        let body = img2img_body(
            &png,
            json!({"num_inference_steps": steps, "strength": strength}),
        );
        assert!(CreateTask::parse(&body).is_ok(), "{steps} {strength}");
    }
}

/// A baseline JPEG of `w` x `h` with an EXIF APP1 segment giving `orientation`.
fn jpeg_with_orientation(img: image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    // TIFF, little-endian: one IFD with one entry, Orientation (0x0112), SHORT, count 1.
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn input_images_are_read_upright_and_as_rgb() {
    use sie_api::request::InputImage;
    // EXIF orientation 6: stored 40x16, shown rotated 90 degrees clockwise, so 16x40. The
    // stored top-left corner (white) ends at the top right.
    let stored = image::RgbImage::from_fn(40, 16, |x, y| {
        if x < 8 && y < 8 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let img = InputImage::from_bytes(jpeg_with_orientation(stored, 6)).unwrap();
    assert_eq!(img.size(), (16, 40));
    let rgb = img.to_rgb().unwrap();
    assert_eq!((rgb.width, rgb.height), (16, 40));
    let at = |x: u32, y: u32| rgb.pixels[((y * rgb.width + x) * 3) as usize];
    assert!(
        at(12, 3) > 200 && at(3, 3) < 50,
        "the white corner is at the top right"
    );

    // Alpha is dropped (Pillow's convert("RGB")), not composited.
    let rgba = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 0]));
    let png = base64_png(rgba.into());
    let img = InputImage::try_from(png).unwrap();
    assert_eq!(img.to_rgb().unwrap().pixels, [10, 20, 30].repeat(6));
    // Gray is repeated into the three channels.
    let gray = image::GrayImage::from_pixel(2, 2, image::Luma([77]));
    let img = InputImage::try_from(base64_png(gray.into())).unwrap();
    assert_eq!(img.to_rgb().unwrap().pixels, vec![77; 12]);
}

#[test]
fn guidance_rescale_belongs_to_text_to_image() {
    let png = png_base64(64, 64);
    let e = CreateTask::parse(&img2img_body(&png, json!({"guidance_rescale": 0.5}))).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        ("invalid_value", Some("modelInputs.guidance_rescale"))
    );
    // 0 does nothing, and is accepted.
    assert!(CreateTask::parse(&img2img_body(&png, json!({"guidance_rescale": 0}))).is_ok());
}

#[test]
fn a_stored_image_is_read_back_from_its_header_and_decoded_by_the_worker() {
    use sie_api::request::InputImage;
    // The stored form keeps the bytes; reading it back checks the header only, so pixels
    // that no longer decode are found where they are used (InputImage::to_rgb).
    let mut png = base64::engine::general_purpose::STANDARD
        .decode(png_base64(64, 64))
        .unwrap();
    let n = png.len();
    png.truncate(n - 40); // cut into the image data, keep the header
    let stored = base64::engine::general_purpose::STANDARD.encode(&png);
    let image = InputImage::try_from(stored.clone()).unwrap();
    assert_eq!(image.size(), (64, 64));
    assert!(image.to_rgb().is_err());
    // At submission the same bytes are refused.
    let e = CreateTask::parse(&img2img_body(&stored, json!({}))).unwrap_err();
    assert_eq!(e.code, "invalid_image");
}
