//! The portal in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver, spoken to with plain HTTP), against `sie serve --model tiny`. A new user
//! signs up, logs in, creates an organization, adds billing information and creates an API
//! key, all by the names a person sees; the key then gets 202 and a result from the API;
//! the playground generates a 64x64 image that appears on the page, and a screenshot of it
//! is saved (`target/tmp/browser/playground.png`). The API docs (`/docs`) render there too,
//! from this server alone.
//!
//! Needs `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`, as
//! `.ci/run` does); `SIE_CHROMIUM` and `SIE_CHROMEDRIVER` name other binaries.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use serde_json::{json, Value};

/// The W3C WebDriver protocol's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: std::process::Child,
    http: reqwest::blocking::Client,
    session: String,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.url, self.session))
            .send();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn binary(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install Chromium and its WebDriver (apt-get install chromium \
         chromium-driver, as .ci/run does), or name them with SIE_CHROMIUM and SIE_CHROMEDRIVER"
    );
    path
}

impl Driver {
    fn start() -> Driver {
        let chromium = binary("SIE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("SIE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{url}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1100,1800"]
            }
        }}});
        let v: Value = http
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Driver {
            process,
            http,
            session,
            url,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().unwrap().json().unwrap();
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    /// The element `selector` finds (CSS, or XPath when it starts with `/`), waiting for it.
    fn find(&self, selector: &str) -> String {
        let using = if selector.starts_with('/') {
            "xpath"
        } else {
            "css selector"
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": using, "value": selector})),
            );
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {selector}: {v}\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, selector: &str) {
        let id = self.find(selector);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    /// Types `text` into the field labelled `label` (found through its `<label for>`), once
    /// the page that has it has loaded (a click before may still be navigating).
    fn fill(&self, label: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let for_id = loop {
            let for_id = self.script(
                "const l = [...document.querySelectorAll('label')].find(l => l.textContent.trim() === arguments[0]); return l ? l.htmlFor : null;",
                json!([label]),
            );
            if let Some(id) = for_id.as_str() {
                break id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no field labelled {label:?}:\n{}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let id = self.find(&format!("#{for_id}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        );
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

#[test]
fn a_new_user_goes_from_sign_up_to_an_image_in_the_playground() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let root = server.root().to_owned();
    let browser = Driver::start();

    browser.go(&format!("{root}/"));
    browser.click("//a[text()='Sign up']");
    browser.fill("Email", "grace@example.com");
    browser.fill("Password", "a long and unusual passphrase");
    browser.click("//button[text()='Sign up']");
    browser.fill("Password", "a long and unusual passphrase");
    browser.click("//button[text()='Log in']");
    browser.find("//button[text()='Log out']");

    browser.click("//a[text()='Organizations']");
    browser.fill("Organization name", "graces-lab");
    browser.click("//button[text()='Create organization']");
    browser.fill("Billing name", "Grace's Lab");
    browser.fill("Billing email", "billing@graces-lab.example");
    browser.fill("Address", "1 Compiler Road\nArlington");
    browser.fill("Country", "US");
    browser.click("//button[text()='Add billing information']");
    assert!(browser.source().contains("approved"));

    browser.click("//a[text()='API keys']");
    browser.click("//button[text()='Create API key']");
    let key_field = browser.find("#key-value");
    let key = browser.call(
        reqwest::Method::GET,
        &format!("/element/{key_field}/property/value"),
        None,
    );
    let key = key.as_str().unwrap().to_owned();
    assert!(key.starts_with("sie_"), "{key}");

    // The key works on the API for the new organization.
    let api = format!(
        "{root}/api/beta/organizations/graces-lab/inference-endpoints/stable-diffusion-2-1"
    );
    let body = json!({"modelInputs": {"prompt": "a salad", "num_inference_steps": 2, "width": 64, "height": 64}});
    let response = server
        .client
        .post(&api)
        .header("Salad-Api-Key", &key)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    let created: Value = response.json().unwrap();
    let url = created["resultUrl"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: Value = server
            .client
            .get(url)
            .header("Salad-Api-Key", &key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["status"] != "pending" {
            assert_eq!(v["status"], "success", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the task did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The playground: a 64x64 image appears on the page.
    browser.go(&format!("{root}/portal/orgs/graces-lab/playground"));
    browser.fill("Prompt", "An oil painting of a salad");
    browser.fill("Steps", "2");
    browser.fill("Width", "64");
    browser.fill("Height", "64");
    browser.click("//button[text()='Generate']");
    browser.find("img.generated");
    let deadline = Instant::now() + Duration::from_secs(30);
    let width = loop {
        let w = browser.script(
            "const i = document.querySelector('img.generated'); return i && i.complete ? [i.naturalWidth, i.naturalHeight] : null;",
            json!([]),
        );
        if !w.is_null() {
            break w;
        }
        assert!(Instant::now() < deadline, "the image did not load");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(width, json!([64, 64]));
    assert!(browser.source().contains("curl -s -X POST"));

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let shot = out.join("playground.png");
    let png = browser.screenshot();
    assert_eq!(image::guess_format(&png).unwrap(), image::ImageFormat::Png);
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn the_api_docs_render_offline_from_this_server_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let root = server.root().to_owned();
    let browser = Driver::start();

    browser.go(&format!("{root}/docs"));
    // The viewer renders the document into its shadow root: the operations by their
    // summaries, once /openapi.json has loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = browser.script(
            "const d = document.querySelector('rapi-doc'); return d && d.shadowRoot ? d.shadowRoot.textContent : '';",
            json!([]),
        );
        let text = text.as_str().unwrap_or_default();
        if text.contains("Create a task") && text.contains("Prometheus metrics") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer did not render the document: {text:.500}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything the page loaded came from this server (the page's CSP would have blocked
    // anything else; this shows nothing else was even asked for).
    let loaded = browser.script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
        json!([]),
    );
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        loaded.iter().any(|u| u.ends_with("/openapi.json")),
        "{loaded:?}"
    );
    for url in &loaded {
        assert!(url.starts_with(&root), "{url} is not from {root}");
    }
}
