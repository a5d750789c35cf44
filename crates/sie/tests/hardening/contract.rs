//! The loose ends of the contract (issue 13, items 5-8, 10 and 12): idempotency keys,
//! the URLs handed out, duplicate keys, cache and CORS headers, `strength`, task id
//! spellings, JSON positions, PNDM's step count.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::{eventually, sie, small, Server};
use super::{key_header, problem_code, raw_request, serve};

/// A POST of `body` under the idempotency key `key`: status and JSON body.
fn post_idempotent(server: &Server, key: &str, body: &Value) -> (u16, Value) {
    let r = server
        .client
        .post(&server.base)
        .header("Salad-Api-Key", &server.key)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

/// SPEC 1.1: the same key with another body is refused 422, and nothing is queued for it.
#[test]
fn an_idempotency_key_reused_with_another_body_is_422() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let (status, first) = post_idempotent(&server, "order-7", &small(1, 1, 1));
    assert_eq!(status, 202, "{first}");
    let (status, again) = post_idempotent(&server, "order-7", &small(1, 1, 1));
    assert_eq!((status, &again["requestId"]), (202, &first["requestId"]));
    let (status, refused) = post_idempotent(&server, "order-7", &small(2, 1, 1));
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{refused}"
    );
    assert_eq!(server.get(&server.base)["total"], 1);
}

/// SPEC 1.1: a key is forgotten when its task's result expires. A retry after the TTL
/// makes a new task, and the old one answers 404, even before the expiry sweep (which runs
/// every TTL) has deleted it: the retry is timed to land between the two.
#[test]
fn an_idempotency_key_is_forgotten_when_its_result_expires() {
    const TTL: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--result-ttl", "6s"]);
    // The sweep runs as the server starts listening, then every TTL.
    let first_sweep = Instant::now();
    let next_sweep_after = |t: Instant| {
        let n = (t.duration_since(first_sweep).as_secs_f64() / TTL.as_secs_f64()).ceil();
        first_sweep + TTL.mul_f64(n)
    };
    for attempt in 0..3 {
        // Submit just after a sweep: the sweep that deletes the task is then the second
        // one after it, a whole TTL after its result expires.
        let sweep = next_sweep_after(Instant::now());
        std::thread::sleep(
            sweep.saturating_duration_since(Instant::now()) + Duration::from_millis(300),
        );
        let deleting_sweep = sweep + TTL * 2;
        let key = format!("retry-{attempt}");
        let body = small(40 + attempt, 1, 1);
        let (status, first) = post_idempotent(&server, &key, &body);
        assert_eq!(status, 202, "{first}");
        let url = first["resultUrl"].as_str().unwrap().to_owned();
        let done = server.finish(&url, Duration::from_secs(60));
        assert_eq!(done["status"], "success", "{done}");
        let finished = Instant::now();
        let (_, same) = post_idempotent(&server, &key, &body);
        assert_eq!(same["requestId"], first["requestId"], "before the TTL");

        let retry_at = finished + TTL + Duration::from_millis(300);
        std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
        let gone = server.get_raw(&url).status();
        let (status, retried) = post_idempotent(&server, &key, &body);
        assert_eq!(status, 202, "{retried}");
        assert_ne!(
            retried["requestId"], first["requestId"],
            "the key still named the expired task"
        );
        assert_eq!(gone, 404, "an expired result is still served");
        if Instant::now() + Duration::from_secs(1) < deleting_sweep {
            // The retry came well before the sweep could have freed the key: shown.
            return;
        }
        eprintln!("attempt {attempt}: the task finished too late to beat the sweep; again");
    }
}

/// A POST of a small body with `headers` (a `Host:` line among them replaces the real one).
fn post_with_headers(server: &Server, headers: &[&str]) -> super::common::RawResponse {
    let key = key_header(server);
    let mut all = vec![key.as_str(), "Content-Type: application/json"];
    all.extend_from_slice(headers);
    raw_request(
        server,
        "POST",
        server.path(),
        &all,
        &small(1, 1, 1).to_string(),
    )
}

/// `resultUrl` and `Location` come from the `Host` header (which must be `host[:port]`),
/// from `X-Forwarded-*` only with `--trust-proxy`, and from `--public-url` alone when it
/// is given; `javascript:` is never reflected.
#[test]
fn forwarded_headers_count_only_behind_trust_proxy_and_public_url_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let result_url = |r: &super::common::RawResponse| {
        assert_eq!(r.status, 202, "{r:?}");
        let url = r.json()["resultUrl"].as_str().unwrap().to_owned();
        assert_eq!(r.header("location"), Some(url.as_str()));
        url
    };
    let forged = [
        "X-Forwarded-Host: javascript:alert(1)//",
        "X-Forwarded-Proto: javascript",
    ];

    let plain = serve(&dir.path().join("plain"), &["--workers", "0"]);
    let url = result_url(&post_with_headers(&plain, &forged));
    assert!(url.starts_with(&format!("{}/api/", plain.root())), "{url}");
    let r = post_with_headers(&plain, &["Host: javascript:alert(1)//"]);
    assert_eq!(
        (r.status, problem_code(&r).as_str()),
        (400, "invalid_header")
    );

    let proxied = serve(
        &dir.path().join("proxied"),
        &["--workers", "0", "--trust-proxy"],
    );
    let url = result_url(&post_with_headers(
        &proxied,
        &[
            "X-Forwarded-Host: api.example.com",
            "X-Forwarded-Proto: https",
        ],
    ));
    assert!(url.starts_with("https://api.example.com/api/"), "{url}");
    for bad in forged {
        let r = post_with_headers(&proxied, &[bad]);
        assert_eq!(
            (r.status, problem_code(&r).as_str()),
            (400, "invalid_header"),
            "{bad}"
        );
    }

    let fixed = serve(
        &dir.path().join("fixed"),
        &["--workers", "0", "--public-url", "https://sie.example.com/"],
    );
    let mut headers = forged.to_vec();
    headers.push("Host: elsewhere.example");
    let url = result_url(&post_with_headers(&fixed, &headers));
    assert!(url.starts_with("https://sie.example.com/api/"), "{url}");

    let refused = sie(&[
        "serve",
        "--model",
        "tiny",
        "--public-url",
        "javascript:alert(1)",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not a public URL"), "{stderr}");
}

/// A key given twice, at any depth, is refused naming it and where it stands.
#[test]
fn duplicate_keys_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let cases = [
        (
            r#"{"modelInputs": {"prompt": "a cat", "prompt": "a dog"}}"#,
            "modelInputs.prompt",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"SCHEDULER": "DDIM", "SCHEDULER": "PNDM"}}"#,
            "callInputs.SCHEDULER",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "modelInputs": {"prompt": "y"}}"#,
            "modelInputs",
        ),
    ];
    for (body, field) in cases {
        let r = server.post(body);
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["code"], "duplicate_field", "{v}");
        assert_eq!(v["field"], field, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{field} appears twice (line 1, column")),
            "{detail}"
        );
    }
    assert_eq!(server.get(&server.base)["total"], 0);
}

/// Every answer carries `nosniff` and `no-store`, refusals made before any route runs
/// included; CORS answers nothing unless `--cors-origin` lists the origin.
#[test]
fn answers_are_not_stored_or_sniffed_and_cors_is_only_for_listed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("plain"), &["--workers", "0"]);
    let path = server.path().to_owned();
    let key = key_header(&server);
    for (headers, status) in [(vec![key.as_str()], 200), (vec![], 401)] {
        let r = raw_request(&server, "GET", &path, &headers, "");
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    }
    let task = format!("{path}/00000000-0000-4000-8000-000000000000");
    let usage = path
        .split("/inference-endpoints")
        .next()
        .unwrap()
        .to_owned()
        + "/usage";
    for (method, target, status) in [
        ("PUT", task.as_str(), 405),
        ("PATCH", usage.as_str(), 405),
        ("GET", "/nowhere", 404),
        ("GET", "/healthz", 200),
    ] {
        let r = raw_request(&server, method, target, &[key.as_str()], "");
        assert_eq!(r.status, status, "{method} {target}: {r:?}");
        assert_eq!(status == 405, r.header("allow").is_some(), "{r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    }
    let preflight = [
        "Origin: https://app.example.com",
        "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: salad-api-key, content-type, idempotency-key",
    ];
    let r = raw_request(&server, "OPTIONS", &path, &preflight, "");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");

    let flags = [
        "--workers",
        "0",
        "--cors-origin",
        "https://app.example.com",
        "--cors-origin",
        "http://localhost:3000",
    ];
    let cors = serve(&dir.path().join("cors"), &flags);
    let r = raw_request(&cors, "OPTIONS", &path, &preflight, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_owned();
    for h in ["salad-api-key", "content-type", "idempotency-key"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(r
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .contains("POST"));
    let mut elsewhere = preflight;
    elsewhere[0] = "Origin: https://evil.example";
    let r = raw_request(&cors, "OPTIONS", &path, &elsewhere, "");
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    // The CORS layer answers preflights itself; the one-Host rule still comes first.
    let real_host = format!("Host: {}", cors.addr());
    let mut two_hosts = vec![real_host.as_str(), "Host: evil.example"];
    two_hosts.extend_from_slice(&preflight);
    let r = raw_request(&cors, "OPTIONS", &path, &two_hosts, "");
    assert_eq!(
        (r.status, problem_code(&r).as_str()),
        (400, "invalid_header")
    );
    // Real requests from a listed origin, refusals included, can be read by its scripts.
    let key = key_header(&cors);
    for headers in [
        vec!["Origin: http://localhost:3000", key.as_str()],
        vec!["Origin: http://localhost:3000"],
    ] {
        let r = raw_request(&cors, "GET", &path, &headers, "");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://localhost:3000"),
            "{r:?}"
        );
    }
    let refused = sie(&["serve", "--model", "tiny", "--cors-origin", "*"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not an origin"));
}

/// A header that says who is calling (`Salad-Api-Key`, a worker's `Authorization`) or where
/// the answer points (`Host`) is refused when sent twice, whichever copy is good; and an
/// organization name that cannot be one is not echoed whole.
#[test]
fn identity_headers_sent_twice_are_refused_and_long_names_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let key = key_header(&server);
    let body = small(1, 1, 1).to_string();
    let json = "Content-Type: application/json";
    let worker = format!("{}/lease", sie_api::worker::PREFIX);
    let cases: [(&str, &str, Vec<&str>, &str); 5] = [
        (
            "GET",
            server.path(),
            vec![key.as_str(), "Salad-Api-Key: wrong"],
            "Salad-Api-Key",
        ),
        (
            "GET",
            server.path(),
            vec!["Salad-Api-Key: wrong", key.as_str()],
            "Salad-Api-Key",
        ),
        (
            "POST",
            server.path(),
            vec![key.as_str(), json, "Host: evil.example"],
            "Host",
        ),
        ("GET", "/healthz", vec!["Host: evil.example"], "Host"),
        (
            "POST",
            &worker,
            vec!["Authorization: Bearer a", "Authorization: Bearer b", json],
            "Authorization",
        ),
    ];
    for (method, target, headers, name) in cases {
        // raw_request adds the real Host unless one is given: these send both.
        let mut all = headers.clone();
        let real_host = format!("Host: {}", server.addr());
        if name == "Host" {
            all.insert(0, &real_host);
        }
        let r = raw_request(&server, method, target, &all, &body);
        assert_eq!(
            (r.status, problem_code(&r).as_str()),
            (400, "invalid_header"),
            "{headers:?}"
        );
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains(name) && detail.contains("2 times"),
            "{detail}"
        );
    }
    assert_eq!(server.get(&server.base)["total"], 0);

    let long = "o".repeat(5000);
    let target = server.path().replacen("default", &long, 1);
    assert_ne!(target, server.path(), "the path names the organization");
    let r = raw_request(&server, "GET", &target, &[key.as_str()], "");
    assert_eq!(
        (r.status, problem_code(&r).as_str()),
        (404, "unknown_organization")
    );
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.len() < 300, "{} bytes: {detail:.200}", detail.len());
}

/// `strength` is img2img's and inpainting's: text-to-image refuses it, naming it, rather
/// than accepting a value that would do nothing.
#[test]
fn strength_is_refused_for_text_to_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let r = server.post(r#"{"modelInputs": {"prompt": "x", "strength": 0.5}}"#);
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(
        (v["code"].as_str(), v["field"].as_str()),
        (Some("invalid_value"), Some("modelInputs.strength"))
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("StableDiffusionImg2ImgPipeline"),
        "{v}"
    );
}

/// A task is found only by the id as it was given out (lowercase, hyphenated); other
/// spellings of the same UUID are unknown, and a long id is not echoed whole.
#[test]
fn only_the_canonical_task_id_finds_a_task_and_a_long_one_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let url = server.submit(small(1, 1, 1));
    let id = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(server.get_raw(&url).status(), 200);
    for other in [
        id.to_uppercase(),
        format!("{{{id}}}"),
        id.replace('-', ""),
        format!("urn:uuid:{id}"),
    ] {
        let r = server.get_raw(&format!("{}/{other}", server.base));
        assert_eq!(r.status(), 404, "{other}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["code"], "unknown_task", "{other}: {v}");
    }
    let long = "a".repeat(5000);
    let r = server.get_raw(&format!("{}/{long}", server.base));
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.len() < 400, "{} bytes echoed", detail.len());
    assert!(!detail.contains(&"a".repeat(81)), "{detail}");
}

/// Bad JSON is refused with its line and column, said once.
#[test]
fn json_errors_state_their_position_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let r = server.post("{\"modelInputs\": {\"prompt\": \"x\",}}");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["code"], "invalid_json");
    let detail = v["detail"].as_str().unwrap();
    assert_eq!(detail.matches("line").count(), 1, "{detail}");
    assert!(detail.contains("line 1 column 32"), "{detail}");
}

/// PNDM runs more UNet calls than steps; progress still counts the steps asked for.
#[test]
fn pndm_at_150_steps_reports_150_steps() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let url = server.submit(json!({
        "modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 64, "height": 64},
        "callInputs": {"SCHEDULER": "PNDMScheduler"}
    }));
    let mut seen = Vec::new();
    let done = eventually(Duration::from_secs(300), Duration::from_millis(20), || {
        let v = server.get(&url);
        if let Some(p) = v.get("progress") {
            seen.push((p["step"].as_u64().unwrap(), p["steps"].as_u64().unwrap()));
        }
        v["status"] != "pending"
    });
    assert!(done, "the task did not finish");
    assert!(!seen.is_empty(), "no progress was seen");
    assert!(
        seen.iter()
            .all(|&(step, steps)| steps == 150 && step <= 150),
        "{seen:?}"
    );
    let v = server.get(&url);
    assert_eq!(
        v["modelOutputs"]["$meta"]["num_inference_steps"], 150,
        "{v}"
    );
}
