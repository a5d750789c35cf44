//! What clients can make the server hold in memory (issue 13, items 1, 2 and 4), measured
//! on the server process's resident memory.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::common::{admin, raw, read_head, read_response, rss, PeakRss, MB};
use super::{post_head, problem_code, serve};

/// 64 POSTs without a key (or with a wrong one) announce 19 MiB bodies and send only their
/// heads: each is answered 401 from its head, never invited to send its body (no
/// `100 Continue`), and the server's memory does not grow by their bodies.
#[test]
fn keyless_posts_announcing_19_mib_are_refused_from_their_heads_without_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    server.get(&server.base);
    let before = rss(server.pid());
    let peak = PeakRss::watch(server.pid());
    let mut held = Vec::new();
    for i in 0..64 {
        let mut stream = raw(server.addr(), Duration::from_secs(30));
        let key = if i % 4 == 3 { "sie_abcdefgh_wrong" } else { "" };
        post_head(&mut stream, &server, Some(key), 19 << 20, i % 2 == 0);
        held.push(stream);
    }
    for (i, stream) in held.iter_mut().enumerate() {
        let r = read_response(stream).unwrap();
        assert_eq!(r.status, 401, "request {i}: {r:?}");
        assert!(
            r.interim.is_empty(),
            "request {i} was invited to send its body"
        );
        let code = problem_code(&r);
        let want = if i % 4 == 3 {
            "invalid_api_key"
        } else {
            "missing_api_key"
        };
        assert_eq!(code, want);
    }
    let peak = peak.peak();
    drop(held);
    eprintln!(
        "keyless POSTs: RSS {} MB before, peak {} MB",
        before / MB,
        peak / MB
    );
    assert!(
        peak < before + 100 * MB,
        "64 keyless 19 MiB POSTs took the server from {} MB to {} MB",
        before / MB,
        peak / MB
    );
}

/// Bodies being read share one byte budget: with room for two 19 MiB bodies, a third
/// POST is answered 503 `server_busy` with `Retry-After` from its head alone; once one of
/// the two is read and answered, its room is free for the next.
#[test]
fn bodies_being_read_share_one_budget_and_a_post_past_it_is_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--workers", "0", "--max-inflight-body-bytes", "40MiB"];
    let server = serve(dir.path(), &flags);
    let length = 19 << 20;
    // `Expect: 100-continue`: the server invites the body once its handler has reserved
    // room for it and starts reading, which tells the test the room is taken.
    let reading = || {
        let mut stream = raw(server.addr(), Duration::from_secs(60));
        post_head(&mut stream, &server, None, length, true);
        let head = read_head(&mut stream).unwrap();
        assert!(head.starts_with("HTTP/1.1 100"), "{head}");
        stream
    };
    let mut first = reading();
    let _second = reading();
    let mut third = raw(server.addr(), Duration::from_secs(60));
    post_head(&mut third, &server, None, length, true);
    let r = read_response(&mut third).unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.interim.is_empty(), "the refused POST was invited to send");
    assert_eq!(problem_code(&r), "server_busy");
    assert!(r.header("retry-after").is_some(), "{r:?}");

    // The first body arrives whole; it is refused for its content, and its room is freed.
    let mut body = br#"{"modelInputs": {"prompt": "x"}, "pad": ""#.to_vec();
    body.resize(length - 2, b'a');
    body.extend_from_slice(b"\"}");
    first.write_all(&body).unwrap();
    let r = read_response(&mut first).unwrap();
    assert_eq!(
        (r.status, problem_code(&r).as_str()),
        (400, "unknown_field")
    );
    let _fourth = reading();
}

/// An image as a PNG file, base64, as a request carries it.
fn png_base64(img: image::DynamicImage) -> String {
    let mut file = std::io::Cursor::new(Vec::new());
    img.write_to(&mut file, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(file.into_inner())
}

/// A 4096x4096 16-bit RGBA PNG of one colour: 128 MiB of pixels in a file of about 130 KB.
fn huge_png() -> String {
    let colour = image::Rgba([9000, 20000, 30000, 65535]);
    png_base64(image::DynamicImage::ImageRgba16(
        image::ImageBuffer::from_pixel(4096, 4096, colour),
    ))
}

/// 32 image-to-image requests at once, each with a 4096x4096 16-bit PNG (128 MiB of pixels)
/// and no width or height: every image is decoded (in at most two decode slots) and each
/// request refused as too large an output, and the server's memory grows by far less than
/// one decoded image per request.
#[test]
fn thirty_two_requests_with_4096_square_16_bit_images_keep_memory_growth_under_1_gb() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--workers", "0", "--max-concurrent-decodes", "2"],
    );
    let png = huge_png();
    let body = json!({
        "modelInputs": {"prompt": "x", "image": png},
        "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}
    })
    .to_string();
    server.get(&server.base);
    let before = rss(server.pid());
    let peak = PeakRss::watch(server.pid());
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    let r = server.post(&body);
                    (r.status().as_u16(), r.json::<Value>().unwrap())
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let peak = peak.peak();
    eprintln!(
        "32 requests with 4096x4096 16-bit images: RSS {} MB before, peak {} MB",
        before / MB,
        peak / MB
    );
    for (status, v) in &answers {
        assert_eq!(
            (*status, v["code"].as_str(), v["field"].as_str()),
            (400, Some("invalid_image"), Some("modelInputs.image")),
            "{v}"
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("give width and height"),
            "{v}"
        );
    }
    assert!(
        peak < before + 1000 * MB,
        "RSS grew from {} MB to {} MB",
        before / MB,
        peak / MB
    );
}

/// A 1024x1024 PNG of noise, base64: about 4 MB, as the tiny model's images are.
fn noise_png() -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(1024, 1024, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        image::Rgb([r, g, b])
    });
    png_base64(image::DynamicImage::ImageRgb8(img))
}

/// A task finishes with eight 1024x1024 images (a result of about 32 MB, completed over
/// the worker protocol by the test playing a GPU node), and 64 clients poll it at once,
/// twice each: every one gets the whole result, and the server's memory grows by about one
/// copy of it, not one per poller. A client that asks for it and then reads nothing is cut
/// off after the body timeout, not kept for as long as it stays connected.
#[test]
fn sixty_four_pollers_of_a_32_mb_result_share_one_copy_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ["--result-cache-bytes", "64MiB", "--body-timeout", "5s"];
    let server = serve(dir.path(), &[&["--workers", "0"][..], &limits].concat());
    let data_dir = ["--data-dir", dir.path().to_str().unwrap()];
    let token = admin(&data_dir, &["worker-token", "create", "gpu-1"])
        .trim()
        .to_owned();
    let url = server.submit(json!({
        "modelInputs": {"prompt": "x", "num_images_per_prompt": 8, "width": 1024,
                        "height": 1024, "num_inference_steps": 1, "seed": 5}
    }));
    let worker_call = |path: &str, body: &Value| {
        server
            .client
            .post(format!("{}/worker/v1{path}", server.root()))
            .bearer_auth(&token)
            .json(body)
            .send()
            .unwrap()
    };
    let lease: Value = worker_call(
        "/lease",
        &json!({"worker": {"model": "tiny", "native_width": 512, "native_height": 512,
            "pipelines": ["StableDiffusionPipeline"], "schedulers": ["PNDMScheduler"],
            "safety_checker": false}, "wait_seconds": 10}),
    )
    .json()
    .unwrap();
    let image = noise_png();
    let outputs = json!({
        "images": vec![image; 8],
        "nsfw_content_detected": null,
        "seed": 5,
        "$meta": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "PNDMScheduler",
            "width": 1024, "height": 1024, "num_inference_steps": 1,
            "num_images_per_prompt": 8, "image_format": "image/png",
            "prompt_truncated": false, "negative_prompt_truncated": false, "model": "tiny"},
        "$timings": {"queue": 1, "inference": 1, "total": 2, "first_step": null}
    });
    let id = lease["id"].as_str().unwrap();
    let done = worker_call(
        &format!("/tasks/{id}/complete"),
        &json!({"attempt": lease["attempt"], "model_outputs": outputs,
                "usage": {"images": 8, "steps": 1, "gpu_ms": 1}}),
    );
    assert_eq!(done.status(), 200);

    let before = rss(server.pid());
    let peak = PeakRss::watch(server.pid());
    let sizes: Vec<u64> = std::thread::scope(|scope| {
        let pollers: Vec<_> = (0..64)
            .map(|_| {
                scope.spawn(|| {
                    let client = reqwest::blocking::Client::new();
                    (0..2)
                        .map(|_| {
                            let mut r = client
                                .get(&url)
                                .header("Salad-Api-Key", &server.key)
                                .send()
                                .unwrap();
                            assert_eq!(r.status(), 200);
                            std::io::copy(&mut r, &mut std::io::sink()).unwrap()
                        })
                        .max()
                        .unwrap()
                })
            })
            .collect();
        pollers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let peak = peak.peak();
    let size = sizes[0];
    eprintln!(
        "64 pollers of a {} MB result: RSS {} MB before, peak {} MB",
        size / MB,
        before / MB,
        peak / MB
    );
    assert!(size > 30 * MB, "the result is {size} bytes");
    assert!(sizes.iter().all(|&s| s == size), "{sizes:?}");
    let v = server.get(&url);
    assert_eq!(v["status"], "success");
    assert_eq!(v["modelOutputs"]["images"].as_array().unwrap().len(), 8);
    assert!(
        peak < before + 200 * MB,
        "64 pollers of a {} MB result took the server from {} MB to {} MB",
        size / MB,
        before / MB,
        peak / MB
    );

    let path = &url[url.find("/api/").unwrap()..];
    let mut stalled = raw(server.addr(), Duration::from_secs(60));
    write!(
        stalled,
        "GET {path} HTTP/1.1\r\nHost: x\r\nSalad-Api-Key: {}\r\n\r\n",
        server.key
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(5 + 6));
    let mut got = Vec::new();
    let end = std::io::Read::read_to_end(&mut stalled, &mut got);
    assert!(
        end.is_ok() && (got.len() as u64) < size,
        "a client that read nothing for 11 s: {end:?} after {} of {size} bytes",
        got.len()
    );
}
