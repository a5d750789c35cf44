//! `sie model pull` against a fake Hugging Face hub: the real binary, with `HF_ENDPOINT`
//! pointing at a server started here on 127.0.0.1:0 that serves the tiny model in the hub's
//! URL layout (the revision API with sizes, blob ids and LFS SHA-256s; `resolve` with the
//! hub's headers and Range support), and can cut a connection, ignore a range, serve other
//! bytes than it lists, or demand a token. Every test asserts what ends up on disk and what
//! the binary asked the server for.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sha1::Digest;

const REPO: &str = "acme/tiny-sd";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_secret_token";
const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
/// What a pull of the full weights fetches (the tiny model has both tokenizer configs).
const FULL: [&str; 12] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    UNET,
    "vae/config.json",
    VAE,
];

/// What the fake hub does besides answering.
#[derive(Default)]
struct Behaviour {
    /// Answer 401 to a request without `Authorization: Bearer TOKEN`.
    require_token: bool,
    /// Close the connection after this many body bytes the first time this path is served.
    cut_once: Option<(String, usize)>,
    /// Answer every Range request with 200 and the whole file.
    ignore_range: bool,
    /// Serve these bytes for this path instead of what the listing describes.
    lie: Option<(String, Vec<u8>)>,
    /// Answer an LFS file's `resolve` with a 302 to the same path at this base URL (another
    /// server), as the real hub sends its large files to a CDN.
    cdn: Option<String>,
}

/// One request the hub saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct State {
    files: BTreeMap<String, Vec<u8>>,
    behaviour: Behaviour,
    seen: Vec<Seen>,
}

/// The fake hub: `REPO` at revision `main`, commit `SHA`.
struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    fn start(files: BTreeMap<String, Vec<u8>>, behaviour: Behaviour) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            files,
            behaviour,
            seen: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FakeHub { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests seen so far, and forgets them.
    fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }

    fn behave(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }
}

/// The `resolve` requests among `seen`, as the file paths they asked for.
fn resolved(seen: &[Seen]) -> Vec<String> {
    let prefix = format!("/{REPO}/resolve/{SHA}/");
    seen.iter()
        .filter_map(|s| s.path.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let target = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
    let mut headers = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let seen = Seen {
        path: path.to_owned(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    let mut state = state.lock().unwrap();
    state.seen.push(seen.clone());
    if state.behaviour.require_token
        && seen.authorization.as_deref() != Some(&format!("Bearer {TOKEN}"))
    {
        let body = br#"{"error":"Invalid username or password."}"#;
        return respond(&mut stream, "401 Unauthorized", &[], body, None);
    }
    let api = format!("/api/models/{REPO}/revision/");
    let resolve = format!("/{REPO}/resolve/");
    if let Some(revision) = path.strip_prefix(&api) {
        if revision != "main" && revision != SHA {
            let body = format!(r#"{{"error":"Invalid rev id: {revision}"}}"#);
            return respond(&mut stream, "404 Not Found", &[], body.as_bytes(), None);
        }
        assert_eq!(query, "blobs=true", "sizes and hashes are asked for");
        let body = listing(&state.files).to_string();
        respond(&mut stream, "200 OK", &[], body.as_bytes(), None);
    } else if let Some(rest) = path.strip_prefix(&resolve) {
        let (revision, file) = rest.split_once('/').unwrap();
        let Some(listed) = state.files.get(file).filter(|_| revision == SHA) else {
            let headers = [("X-Error-Code", "EntryNotFound".to_owned())];
            return respond(&mut stream, "404 Not Found", &headers, b"", None);
        };
        let mut headers = vec![
            ("X-Repo-Commit", SHA.to_owned()),
            ("Accept-Ranges", "bytes".to_owned()),
        ];
        if is_lfs(file) {
            headers.push(("ETag", format!("\"{}\"", sha256(listed))));
            headers.push(("X-Linked-Etag", format!("\"{}\"", sha256(listed))));
            headers.push(("X-Linked-Size", listed.len().to_string()));
            if let Some(cdn) = &state.behaviour.cdn {
                headers.push(("Location", format!("{cdn}{path}")));
                drop(state);
                return respond(&mut stream, "302 Found", &headers, b"", None);
            }
        } else {
            headers.push(("ETag", format!("\"{}\"", git_blob_id(listed))));
        }
        let bytes = match &state.behaviour.lie {
            Some((path, bytes)) if path == file => bytes.clone(),
            _ => listed.clone(),
        };
        let cut = match &state.behaviour.cut_once {
            Some((path, at)) if path == file => Some(*at),
            _ => None,
        };
        if cut.is_some() {
            state.behaviour.cut_once = None;
        }
        let start = seen
            .range
            .as_deref()
            .filter(|_| !state.behaviour.ignore_range)
            .map(|r| {
                let first = r.strip_prefix("bytes=").unwrap().strip_suffix('-').unwrap();
                first.parse::<usize>().unwrap()
            });
        drop(state);
        match start {
            Some(start) if start >= bytes.len() => respond(
                &mut stream,
                "416 Range Not Satisfiable",
                &headers,
                b"",
                None,
            ),
            Some(start) => {
                let range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
                headers.push(("Content-Range", range));
                let status = "206 Partial Content";
                respond(&mut stream, status, &headers, &bytes[start..], cut)
            }
            None => respond(&mut stream, "200 OK", &headers, &bytes, cut),
        }
    } else {
        respond(&mut stream, "404 Not Found", &[], b"", None);
    }
}

/// Writes a response announcing all of `body`, but only its first `cut` bytes when set,
/// then closes the connection.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    cut: Option<usize>,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let sent = &body[..cut.unwrap_or(body.len()).min(body.len())];
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors")
}

/// The revision API's answer with `?blobs=true`, as the hub writes it.
fn listing(files: &BTreeMap<String, Vec<u8>>) -> Value {
    let siblings: Vec<Value> = files
        .iter()
        .map(|(path, bytes)| {
            let mut sibling = json!({
                "rfilename": path,
                "size": bytes.len(),
                "blobId": git_blob_id(bytes),
            });
            if is_lfs(path) {
                // An LFS file's blob id is its pointer's; the content's hash is `lfs.sha256`.
                sibling["blobId"] = json!(git_blob_id(b"version https://git-lfs..."));
                sibling["lfs"] = json!({
                    "sha256": sha256(bytes),
                    "size": bytes.len(),
                    "pointerSize": 134,
                });
            }
            sibling
        })
        .collect();
    json!({ "id": REPO, "modelId": REPO, "sha": SHA, "private": false, "siblings": siblings })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn git_blob_id(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()));
    hasher.update(bytes);
    hex(&hasher.finalize())
}

/// Every file under `dir`, by its path relative to it with `/`.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_str().unwrap();
                files.insert(relative.replace('\\', "/"), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// The tiny model's files, with a README and a safety checker's config beside them that a
/// pull leaves alone.
fn tiny_repo(tmp: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = read_tree(&common::tiny_model(tmp));
    files.insert("README.md".into(), b"# tiny\n".to_vec());
    files.insert("safety_checker/config.json".into(), b"{}".to_vec());
    files
}

/// `sie model pull ARGS…` in `cwd` against `hub`, with `HF_TOKEN` set to `token`.
fn pull(hub: &FakeHub, cwd: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(common::SIE);
    command
        .current_dir(cwd)
        .args(["model", "pull"])
        .args(args)
        .env("HF_ENDPOINT", hub.url())
        .env_remove("HF_TOKEN")
        .env_remove("SIE_DEVICE");
    if let Some(token) = token {
        command.env("HF_TOKEN", token);
    }
    command.output().expect("the sie binary runs")
}

/// As [`pull`], which must succeed; its stdout.
fn pull_ok(hub: &FakeHub, cwd: &Path, args: &[&str]) -> String {
    let out = pull(hub, cwd, args, Some(TOKEN));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sie model pull {args:?} failed:\n{stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// As [`pull`], which must fail; its stderr.
fn pull_err(hub: &FakeHub, cwd: &Path, args: &[&str], token: Option<&str>) -> String {
    let out = pull(hub, cwd, args, token);
    assert!(!out.status.success(), "sie model pull {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// Asserts that `dir` holds exactly `paths`, each with the bytes `repo` has.
fn assert_pulled(dir: &Path, repo: &BTreeMap<String, Vec<u8>>, paths: &[&str]) {
    let got = read_tree(dir);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    let mut expected = paths.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    for path in paths {
        assert!(got[*path] == repo[*path], "{path} differs from the hub's");
    }
}

fn dir_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_pull_fetches_what_the_engine_reads_with_the_token_and_the_directory_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let hub = FakeHub::start(
        repo.clone(),
        Behaviour {
            require_token: true,
            ..Behaviour::default()
        },
    );
    // Without --out, the directory is named after the repository, in the current directory.
    let stdout = pull_ok(&hub, tmp.path(), &[REPO]);
    let dir = tmp.path().join("tiny-sd");
    assert_pulled(&dir, &repo, &FULL);
    assert!(stdout.contains(&format!("commit {SHA}")), "{stdout}");
    assert!(
        stdout.contains("ok: every tensor is present with the shape its config asks for"),
        "the check runs after the pull:\n{stdout}"
    );
    let seen = hub.take_seen();
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    let mut fetched = resolved(&seen);
    fetched.sort();
    let mut expected = FULL.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(fetched, expected, "each file once, at the listed commit");

    let png = tmp.path().join("salad.png");
    common::sie_ok(&[
        "model",
        "run",
        "--model",
        dir_arg(&dir),
        "--prompt",
        "a salad",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        "1",
        "--out",
        dir_arg(&png),
    ]);
    assert_eq!(common::image_size(&std::fs::read(&png).unwrap()), (64, 48));

    // A second pull finds every file present and verified, and fetches none.
    let out = pull(
        &hub,
        tmp.path(),
        &[REPO, "--out", dir_arg(&dir)],
        Some(TOKEN),
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.matches("(verified)").count(), FULL.len(), "{stdout}");
    assert_eq!(resolved(&hub.take_seen()), Vec::<String>::new());
    assert!(!stdout.contains(TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(TOKEN));
}

#[test]
fn refusals_name_the_repository_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let hub = FakeHub::start(
        repo.clone(),
        Behaviour {
            require_token: true,
            ..Behaviour::default()
        },
    );
    let out = tmp.path().join("out");
    let out = dir_arg(&out);

    let err = pull_err(&hub, tmp.path(), &[REPO, "--out", out], None);
    assert!(err.contains("401") && err.contains(REPO), "{err}");
    assert!(err.contains("set HF_TOKEN"), "{err}");
    let err = pull_err(&hub, tmp.path(), &[REPO, "--out", out], Some("hf_wrong"));
    assert!(
        err.contains("the token in HF_TOKEN") && !err.contains("hf_wrong"),
        "{err}"
    );

    let args = [REPO, "--out", out, "--revision", "v9"];
    let err = pull_err(&hub, tmp.path(), &args, Some(TOKEN));
    assert!(err.contains("404") && err.contains("revision v9"), "{err}");
    assert!(err.contains("--revision"), "{err}");

    // The tiny repository has no fp16 weights: nothing is fetched, and the error says so.
    let err = pull_err(
        &hub,
        tmp.path(),
        &[REPO, "--out", out, "--fp16"],
        Some(TOKEN),
    );
    assert!(
        err.contains("unet/diffusion_pytorch_model.fp16.safetensors"),
        "{err}"
    );
    assert!(err.contains("without --fp16"), "{err}");
    assert_eq!(resolved(&hub.take_seen()), Vec::<String>::new());

    let err = pull_err(&hub, tmp.path(), &["acme/../x"], Some(TOKEN));
    assert!(err.contains("owner/name"), "{err}");
}

#[test]
fn a_corrupted_file_is_detected_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let hub = FakeHub::start(repo.clone(), Behaviour::default());
    let dir = tmp.path().join("model");
    pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)]);
    hub.take_seen();

    // Same sizes, one byte changed: an LFS file (SHA-256) and a git one (blob id).
    for path in [UNET, "tokenizer/vocab.json"] {
        let file = dir.join(path);
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&file, bytes).unwrap();
    }
    let stdout = pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)]);
    assert!(stdout.contains("present but its SHA-256 is"), "{stdout}");
    assert!(
        stdout.contains("present but its git blob id is"),
        "{stdout}"
    );
    let mut fetched = resolved(&hub.take_seen());
    fetched.sort();
    assert_eq!(fetched, ["tokenizer/vocab.json", UNET]);
    assert_pulled(&dir, &repo, &FULL);
    assert!(stdout.contains("ok: every tensor is present"), "{stdout}");
}

#[test]
fn an_interrupted_download_is_resumed_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let cut = repo[UNET].len() / 3;
    let hub = FakeHub::start(
        repo.clone(),
        Behaviour {
            cut_once: Some((UNET.into(), cut)),
            ..Behaviour::default()
        },
    );
    let dir = tmp.path().join("model");
    let out = pull(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{UNET}: ")) && stderr.contains("resuming"),
        "{stderr}"
    );
    let unet_path = format!("/{REPO}/resolve/{SHA}/{UNET}");
    let ranges: Vec<Option<String>> = hub
        .take_seen()
        .into_iter()
        .filter(|s| s.path == unet_path)
        .map(|s| s.range)
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={cut}-"))]);
    assert_pulled(&dir, &repo, &FULL);
}

#[test]
fn a_partial_file_from_an_earlier_run_is_continued_or_started_over() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let hub = FakeHub::start(repo.clone(), Behaviour::default());
    let dir = tmp.path().join("model");
    let part = dir.join(format!("{VAE}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    let kept = repo[VAE].len() / 2;
    let vae_path = format!("/{REPO}/resolve/{SHA}/{VAE}");
    let vae_ranges = |hub: &FakeHub| -> Vec<Option<String>> {
        hub.take_seen()
            .into_iter()
            .filter(|s| s.path == vae_path)
            .map(|s| s.range)
            .collect()
    };

    std::fs::write(&part, &repo[VAE][..kept]).unwrap();
    pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)]);
    assert_eq!(vae_ranges(&hub), [Some(format!("bytes={kept}-"))]);
    assert_pulled(&dir, &repo, &FULL);

    // A server that ignores the range answers 200 with the whole file: the kept bytes (here
    // wrong ones) are dropped and the file written from the start.
    std::fs::remove_file(dir.join(VAE)).unwrap();
    std::fs::write(&part, vec![7u8; kept]).unwrap();
    hub.behave(Behaviour {
        ignore_range: true,
        ..Behaviour::default()
    });
    pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)]);
    assert_eq!(vae_ranges(&hub), [Some(format!("bytes={kept}-"))]);
    assert_pulled(&dir, &repo, &FULL);
}

#[test]
fn a_download_unlike_the_listing_is_an_error_naming_the_file_expected_and_got() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let mut other = repo[VAE].clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let hub = FakeHub::start(
        repo.clone(),
        Behaviour {
            lie: Some((VAE.into(), other.clone())),
            ..Behaviour::default()
        },
    );
    let dir = tmp.path().join("model");
    let err = pull_err(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)], None);
    assert!(err.contains(VAE) && err.contains(&hub.url()), "{err}");
    let expected = format!(
        "SHA-256 expected {}, got {}",
        sha256(&repo[VAE]),
        sha256(&other)
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!dir.join(VAE).exists() && !dir.join(format!("{VAE}.part")).exists());
}

#[test]
fn fp16_fetches_the_half_weights_when_the_repo_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = tiny_repo(tmp.path());
    // Other valid weights (another seed) stand for the fp16 files, so that the bytes show
    // which file was fetched.
    let other: PathBuf = tmp.path().join("seed1");
    common::sie_ok(&["model", "tiny", "--seed", "1", "--out", dir_arg(&other)]);
    let half = [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ];
    for path in half {
        let full = path.replace(".fp16", "");
        repo.insert(path.into(), std::fs::read(other.join(full)).unwrap());
    }
    assert_ne!(repo[half[1]], repo[UNET]);
    let hub = FakeHub::start(repo.clone(), Behaviour::default());
    let dir = tmp.path().join("model");
    let stdout = pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir), "--fp16"]);
    let mut expected: Vec<&str> = FULL
        .into_iter()
        .filter(|p| !p.ends_with(".safetensors"))
        .collect();
    expected.extend(half);
    assert_pulled(&dir, &repo, &expected);
    assert!(stdout.contains("ok: every tensor is present"), "{stdout}");
}

#[test]
fn large_files_redirected_to_a_cdn_are_fetched_there_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    // Another port is another origin: what a client sends there is what a CDN would see.
    let cut = repo[UNET].len() / 2;
    let cdn = FakeHub::start(
        repo.clone(),
        Behaviour {
            cut_once: Some((UNET.into(), cut)),
            ..Behaviour::default()
        },
    );
    let hub = FakeHub::start(
        repo.clone(),
        Behaviour {
            require_token: true,
            cdn: Some(cdn.url()),
            ..Behaviour::default()
        },
    );
    let dir = tmp.path().join("model");
    let out = pull(
        &hub,
        tmp.path(),
        &[REPO, "--out", dir_arg(&dir)],
        Some(TOKEN),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_pulled(&dir, &repo, &FULL);
    // The hub saw every request with the token; the CDN the large files, never the token,
    // and the cut one resumed from where it stopped, through the hub's redirect again.
    assert!(hub
        .take_seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    let at_cdn = cdn.take_seen();
    assert!(
        at_cdn.iter().all(|s| s.authorization.is_none()),
        "{at_cdn:?}"
    );
    let mut large: Vec<String> = resolved(&at_cdn);
    let mut expected: Vec<String> = FULL
        .iter()
        .filter(|p| is_lfs(p))
        .map(|p| p.to_string())
        .collect();
    expected.sort();
    large.sort();
    large.dedup();
    assert_eq!(large, expected);
    let unet_ranges: Vec<Option<String>> = at_cdn
        .iter()
        .filter(|s| s.path.ends_with(UNET))
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(unet_ranges, [None, Some(format!("bytes={cut}-"))]);
}

/// `repo` as today's libraries save it: the UNet in two shards beside its index, and the
/// tokenizer as `tokenizer.json` alone.
fn resaved(repo: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    use sie_engine::candle_core::{safetensors, Device, Tensor};
    let mut files = repo.clone();
    let whole = files.remove(UNET).unwrap();
    let tensors = safetensors::load_buffer(&whole, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    let dir = tempfile::tempdir().unwrap();
    for (k, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("diffusion_pytorch_model-{:05}-of-00002.safetensors", k + 1);
        let part: std::collections::HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        let path = dir.path().join(&file);
        safetensors::save(&part, &path).unwrap();
        files.insert(format!("unet/{file}"), std::fs::read(&path).unwrap());
        for n in chunk {
            weight_map.insert((*n).clone(), json!(file));
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    files.insert(
        "unet/diffusion_pytorch_model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    );
    let vocab: Value =
        serde_json::from_slice(&files.remove("tokenizer/vocab.json").unwrap()).unwrap();
    let merges: Vec<Value> = String::from_utf8(files.remove("tokenizer/merges.txt").unwrap())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .map(|l| json!(l))
        .collect();
    let tokenizer = json!({"version": "1.0", "added_tokens": [],
        "model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": vocab, "merges": merges}});
    files.insert(
        "tokenizer/tokenizer.json".into(),
        tokenizer.to_string().into_bytes(),
    );
    files
}

#[test]
fn a_repository_saved_in_shards_with_a_tokenizer_json_is_pulled_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = resaved(&tiny_repo(tmp.path()));
    let hub = FakeHub::start(repo.clone(), Behaviour::default());
    let dir = tmp.path().join("model");
    // The pull ends with `sie model check`, which loads every tensor.
    let stdout = pull_ok(&hub, tmp.path(), &[REPO, "--out", dir_arg(&dir)]);
    assert!(stdout.contains("2 shards listed in"), "{stdout}");
    assert!(stdout.contains("tokenizer: tokenizer.json"), "{stdout}");
    let expected: Vec<&str> = repo
        .keys()
        .map(String::as_str)
        .filter(|p| !p.starts_with("safety_checker/") && *p != "README.md")
        .collect();
    assert_pulled(&dir, &repo, &expected);
}
