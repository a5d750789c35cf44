//! Every refusal of the public API (SPEC 1.4), each a problem document with its status and
//! stable code, and nothing queued for any of them.

mod common;

use common::{long, problem, read, small, spawn_app, Options};
use serde_json::json;
use sie_store::{Accounts, OrgName, Timestamp};

/// A 1x1 PNG, base64.
const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_organizations_are_checked_401_404_403() {
    let app = spawn_app(Options::idle()).await;
    let c = &app.client;
    let (s, v) = problem(c.get(&app.base).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("missing_api_key")));
    for bad in [
        "sie_nope",
        "sie_abcdefgh_0123456789abcdef0123456789abcdef",
        " ",
    ] {
        let (s, v) = problem(
            c.get(&app.base)
                .header("Salad-Api-Key", bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(s == 401, "{bad:?}: {v}");
    }
    // A revoked key stops working at once.
    let account = app
        .store
        .authenticate(&app.key, Timestamp::now())
        .unwrap()
        .unwrap();
    let key = app.store.create_api_key(account, Timestamp::now()).unwrap();
    app.store
        .revoke_api_key(key.prefix(), Timestamp::now())
        .unwrap();
    let (s, v) = problem(
        app.post_with(key.expose_key(), &small(1, 1, 1).to_string())
            .await,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_api_key")));

    // An organization that does not exist, and one the key's account is not a member of,
    // look alike.
    common::tenant(app.store.as_ref(), "other");
    for org in ["nobody", "other", "NOT-A-NAME"] {
        let url = app.base.replace("/acme/", &format!("/{org}/"));
        let (s, v) = problem(app.get_raw(&url).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("unknown_organization")),
            "{org}"
        );
    }
    // 403 until the organization has billing information.
    app.store
        .create_org(
            &OrgName::parse("unpaid").unwrap(),
            account,
            Timestamp::now(),
        )
        .unwrap();
    let unpaid = app.base.replace("/acme/", "/unpaid/");
    let (s, v) = problem(app.get_raw(&unpaid).await).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("organization_not_approved"))
    );
    assert!(v["detail"].as_str().unwrap().contains("billing"), "{v}");
    assert_eq!(app.get(&app.base).await["total"], 0, "nothing was queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tasks_routes_and_methods_are_404_and_405() {
    let app = spawn_app(Options::idle()).await;
    let ours = app.submit(small(1, 1, 1)).await;
    let id = ours.rsplit('/').next().unwrap();
    // Another organization's task is not found, like one that never existed.
    let other_key = common::tenant(app.store.as_ref(), "other");
    let theirs = app.base.replace("/acme/", "/other/") + "/" + id;
    let (s, v) = problem(
        app.client
            .get(&theirs)
            .header("Salad-Api-Key", &other_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("unknown_task")));
    for missing in ["00000000-0000-4000-8000-000000000000", "not-an-id"] {
        let url = format!("{}/{missing}", app.base);
        let (s, v) = problem(app.get_raw(&url).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("unknown_task")),
            "{missing}"
        );
        let (s, _) = app.delete(&url).await;
        assert_eq!(s, 404);
    }
    let (s, v) = problem(app.get_raw(&format!("{}/nowhere", app.root)).await).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    let (s, v) = problem(
        app.client
            .put(&app.base)
            .header("Salad-Api-Key", &app.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (405, Some("method_not_allowed")));
    // axum's own rejections (a path segment that is not UTF-8, a bad query) are problems too.
    let (s, _) = problem(app.get_raw(&format!("{}/%FF", app.base)).await).await;
    assert_eq!(s, 400);
    for query in ["page_size=1000", "page=0", "page=x"] {
        let (s, v) = problem(app.get_raw(&format!("{}?{query}", app.base)).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("out_of_range")),
            "{query}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_are_400s_that_name_the_field_and_what_is_accepted() {
    let app = spawn_app(Options::idle()).await;
    let image = json!({"modelInputs": {"prompt": "x", "image": PNG_1X1, "width": 64, "height": 64}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}});
    let cases = [
        (
            "{\"modelInputs\": {\"prompt\": \"x\",}}".to_owned(),
            "invalid_json",
            "column",
        ),
        ("[1, 2]".to_owned(), "invalid_body", "JSON object"),
        ("{}".to_owned(), "missing_field", "modelInputs"),
        (
            r#"{"modelInputs": {}}"#.to_owned(),
            "missing_field",
            "modelInputs.prompt",
        ),
        (
            r#"{"modelInputs": {"prompt": "  "}}"#.to_owned(),
            "invalid_value",
            "empty",
        ),
        (
            r#"{"modelInputs": {"prompt": 3}}"#.to_owned(),
            "wrong_type",
            "a string",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "width": 500}}"#.to_owned(),
            "invalid_value",
            "use 496 or 504",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "stepz": 1}}"#.to_owned(),
            "unknown_field",
            "modelInputs.stepz",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "extra": 1}"#.to_owned(),
            "unknown_field",
            "extra",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "num_inference_steps": 151}}"#.to_owned(),
            "out_of_range",
            "1..=150",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "guidance_scale": -1}}"#.to_owned(),
            "out_of_range",
            "0..=50",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "num_images_per_prompt": 9}}"#.to_owned(),
            "out_of_range",
            "1..=8",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "seed": -1}}"#.to_owned(),
            "out_of_range",
            "negative",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"SCHEDULER": "Karras"}}"#.to_owned(),
            "invalid_value",
            "LMSDiscreteScheduler",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"PIPELINE": "Flux"}}"#.to_owned(),
            "invalid_value",
            "StableDiffusionPipeline",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"safety_checker": "maybe"}}"#
                .to_owned(),
            "wrong_type",
            "\"true\" or \"false\"",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"image_format": "gif"}}"#.to_owned(),
            "invalid_value",
            "PNG, JPEG, WEBP",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "strength": 0.5}}"#.to_owned(),
            "invalid_value",
            "modelInputs.strength: is only used by",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "prompt": "y"}}"#.to_owned(),
            "duplicate_field",
            "modelInputs.prompt appears twice",
        ),
    ];
    for (body, code, needle) in cases {
        let (s, v) = problem(app.post(&body).await).await;
        assert_eq!((s, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    assert_eq!(app.get(&app.base).await["total"], 0, "nothing was queued");

    // An image is decoded, and one that does not decode is refused naming the field.
    let cases = [
        (
            r#"{"modelInputs": {"prompt": "x", "image": "@@@"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}"#,
            "base64",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "image": "aGVsbG8="}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}"#,
            "PNG, JPEG or WebP",
        ),
    ];
    for (body, needle) in cases {
        let (s, v) = problem(app.post(body).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid_image")),
            "{body}: {v}"
        );
        assert_eq!(v["field"], "modelInputs.image", "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    assert_eq!(app.get(&app.base).await["total"], 0, "nothing was queued");
    let accepted = app.submit(image).await;
    assert!(accepted.starts_with(&app.base), "{accepted}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_no_worker_runs_is_refused_before_its_images_are_decoded() {
    // This endpoint's workers serve a 9-channel inpainting model: inpainting only.
    let app = spawn_app(Options::idle().inpainting()).await;
    let cases = [
        r#"{"modelInputs": {"prompt": "x"}}"#.to_owned(),
        json!({"modelInputs": {"prompt": "x", "image": PNG_1X1}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}).to_string(),
        // A broken image is never read: the pipeline is refused first.
        r#"{"modelInputs": {"prompt": "x", "image": "@@@"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}"#.to_owned(),
    ];
    for body in cases {
        let (s, v) = problem(app.post(&body).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("pipeline_unavailable")),
            "{body}: {v}"
        );
        assert_eq!(v["field"], "callInputs.PIPELINE", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("available: StableDiffusionInpaintPipeline"),
            "{body}: {v}"
        );
    }
    assert_eq!(app.get(&app.base).await["total"], 0, "nothing was queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_safety_checker_is_refused_at_post_where_none_is_installed() {
    let app = spawn_app(Options::idle().without_checker()).await;
    for asked in [json!(true), json!("TRUE")] {
        let mut body = small(1, 1, 1);
        body["callInputs"]["safety_checker"] = asked;
        let (s, v) = problem(app.post(&body.to_string()).await).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("safety_checker_unavailable")),
            "{v}"
        );
        assert!(
            v["detail"].as_str().unwrap().contains("--safety-checker"),
            "{v}"
        );
        assert_eq!(v["field"], "callInputs.safety_checker");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn media_type_size_and_queue_caps_are_415_413_and_429() {
    let app = spawn_app(Options::idle().caps(1, 10)).await;
    let r = app
        .client
        .post(&app.base)
        .header("Salad-Api-Key", &app.key)
        .header("Content-Type", "text/plain")
        .body(small(1, 1, 1).to_string())
        .send()
        .await
        .unwrap();
    let (s, v) = problem(r).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let big = format!(
        "{{\"modelInputs\": {{\"prompt\": \"{}\"}}}}",
        "a".repeat(21 << 20)
    );
    let (s, v) = problem(app.post(&big).await).await;
    assert_eq!((s, v["code"].as_str()), (413, Some("body_too_large")));

    app.submit(long()).await;
    let r = app.post(&long().to_string()).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (s, v) = problem(r).await;
    assert_eq!((s, v["code"].as_str()), (429, Some("queue_full")));
    let (_, list) = read(app.get_raw(&app.base).await).await;
    assert_eq!(list["total"], 1, "the refused task was not queued");
}
