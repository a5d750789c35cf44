//! `sie model pull`: a model directory fetched from the Hugging Face hub, verified, then
//! checked as `sie model check` checks it.
//!
//! Only the files the engine reads are fetched (`WANTED`, the list `ModelFiles::open` and
//! `StableDiffusion::load` read), into `--out` as a plain diffusers-layout directory, the
//! one `sie serve --model` takes. The hub is spoken to over its documented HTTP layout with
//! `reqwest::blocking` (already the worker's client):
//!
//! - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` names the commit (`sha`)
//!   and every file with its size, its git blob id, and for LFS files the content's SHA-256.
//!   That answer is the one source of truth for what each file must be.
//! - `GET {endpoint}/{repo}/resolve/{sha}/{path}` fetches a file at that commit, so every file
//!   comes from the same commit even if the branch moves meanwhile. Its `X-Linked-*` headers are
//!   not read: for LFS files the hub puts them on a redirect to its CDN, which the client
//!   follows (dropping the `Authorization` header on the way to the other host).
//!
//! Why not the `hf-hub` crate: its 0.x synchronous API writes into the hub's cache layout
//! (blobs and symlinked snapshots), not a plain directory, and brings a second HTTP client
//! (ureq); 1.x does write into a local directory, but its plain-HTTP path there neither
//! resumes (it writes the destination straight from the first byte) nor checks a SHA-256,
//! and it is async over reqwest 0.13 with the Xet client: a second major version of the HTTP
//! stack for three GETs this module makes itself.
//!
//! Each file is written to `FILE.part`, resumed with `Range: bytes=N-` after a cut connection
//! (in this run, up to `ATTEMPTS` failures in a row without progress, or in the next run), and
//! renamed into place only once its size and checksum match the hub's: the SHA-256 for LFS
//! files, and for the small files kept in git the blob id, git's SHA-1 of
//! `blob {len}\0{content}`. A file already in place is checked the same way and fetched again
//! only when it does not match, so a pull run twice downloads nothing the second time.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::Digest;

use super::common::DeviceArgs;

/// Where the hub is when `HF_ENDPOINT` is not set.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Failures in a row, without a byte of progress between them, before a pull gives up.
const ATTEMPTS: u32 = 5;

/// The files of a model directory that the engine reads, `{weights}` standing for
/// `safetensors` or `fp16.safetensors`; the second field says whether a repo must have it
/// (the tokenizer's two configs are read when present). `safety_checker/` and
/// `feature_extractor/` are left out: the checker is optional and loaded from elsewhere too.
const WANTED: [(&str, bool); 12] = [
    ("model_index.json", true),
    ("scheduler/scheduler_config.json", true),
    ("text_encoder/config.json", true),
    ("text_encoder/model.{weights}", true),
    ("tokenizer/vocab.json", true),
    ("tokenizer/merges.txt", true),
    ("tokenizer/special_tokens_map.json", false),
    ("tokenizer/tokenizer_config.json", false),
    ("unet/config.json", true),
    ("unet/diffusion_pytorch_model.{weights}", true),
    ("vae/config.json", true),
    ("vae/diffusion_pytorch_model.{weights}", true),
];

#[derive(Args)]
pub struct PullArgs {
    /// The hub repository, `owner/name` (e.g. stabilityai/stable-diffusion-2-1-base).
    repo: String,
    /// A branch, tag or commit of the repository.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Directory to write (created if needed); by default the repository's name, in the
    /// current directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fetch the `*.fp16.safetensors` weights (half the download) instead of `*.safetensors`.
    #[arg(long)]
    fp16: bool,
    /// Where the closing check loads the model.
    #[command(flatten)]
    device: DeviceArgs,
}

/// Fetches what the engine needs of `args.repo` into the output directory, then checks it.
pub fn run(args: PullArgs) -> anyhow::Result<()> {
    let repo = args.repo.trim_matches('/');
    check_repo_name(repo)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(repo.rsplit('/').next().unwrap_or(repo)));
    let hub = Hub::from_env()?;
    let info = hub.repo_info(repo, &args.revision)?;
    let files = plan(&info, repo, &args.revision, args.fp16)?;

    let mut missing = Vec::new();
    for file in &files {
        let dest = out.join(&file.path);
        if !dest.exists() {
            missing.push(file);
            continue;
        }
        match verify(&dest, file).with_context(|| format!("reading {}", dest.display()))? {
            Ok(()) => println!("present  {} (verified)", file.path),
            Err(mismatch) => {
                println!(
                    "{}: present but {mismatch}; fetching it again",
                    dest.display()
                );
                missing.push(file);
            }
        }
    }

    let total: u64 = missing.iter().map(|f| f.size).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let mut done = 0;
    for file in missing {
        bar.set_message(file.path.clone());
        hub.fetch(repo, &info.sha, file, &out, &bar, done)?;
        done += file.size;
        bar.set_position(done);
        bar.suspend(|| println!("fetched  {} ({})", file.path, HumanBytes(file.size)));
    }
    bar.finish_and_clear();
    if args.fp16 {
        // `WeightsFile::find` prefers the full file when both are there.
        for file in files
            .iter()
            .filter(|f| f.path.ends_with(".fp16.safetensors"))
        {
            let full = out.join(file.path.replace(".fp16.safetensors", ".safetensors"));
            if full.exists() {
                println!(
                    "note: {} is there too and loads before the fp16 file; delete it to use {}",
                    full.display(),
                    file.path
                );
            }
        }
    }
    println!(
        "pulled {repo} at {} (commit {}) into {}",
        args.revision,
        info.sha,
        out.display()
    );
    super::model::check(&out, &Default::default(), &args.device)
}

/// `owner/name` or `name`, each part letters, digits, `-`, `_` and `.`, as the hub allows.
fn check_repo_name(repo: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = repo.split('/').collect();
    let valid_part = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() > 2 || !parts.iter().all(valid_part) {
        bail!(
            "repository {repo:?} is not a hub repository name; expected owner/name, \
             e.g. stabilityai/stable-diffusion-2-1-base"
        );
    }
    Ok(())
}

/// The hub's answer to `GET /api/models/{repo}/revision/{rev}?blobs=true`, the parts read.
#[derive(Deserialize)]
struct RepoInfo {
    /// The commit the revision names.
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    /// The git blob id (SHA-1); for an LFS file, the id of its pointer, not of its content.
    #[serde(rename = "blobId", alias = "oid")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// One file to have, and what the hub says it is.
#[derive(Debug)]
struct Remote {
    path: String,
    size: u64,
    checksum: Option<Checksum>,
}

#[derive(Debug)]
enum Checksum {
    /// The content's SHA-256, lowercase hex (LFS files).
    Sha256(String),
    /// Git's blob id: SHA-1 of `blob {len}\0{content}`, lowercase hex (files kept in git).
    GitBlob(String),
}

/// The files of `WANTED` as the hub lists them, or an error naming every one it lacks. A
/// component's weights may be in shards instead (`{stem}.safetensors.index.json` and
/// `{stem}-00001-of-0000N.safetensors`, or the fp16 variant's `{stem}.safetensors.index.fp16.json`
/// and `{stem}.fp16-00001-of-0000N.safetensors`, as diffusers and transformers save large
/// checkpoints), and the tokenizer `tokenizer/tokenizer.json` instead of `vocab.json` and
/// `merges.txt` (as transformers 5 saves it): the engine reads both.
fn plan(info: &RepoInfo, repo: &str, revision: &str, fp16: bool) -> anyhow::Result<Vec<Remote>> {
    let weights = if fp16 {
        "fp16.safetensors"
    } else {
        "safetensors"
    };
    let listed = |path: &str| info.siblings.iter().find(|s| s.rfilename == path);
    let remote = |sibling: &Sibling| -> anyhow::Result<Remote> {
        let path = &sibling.rfilename;
        let (size, checksum) = match &sibling.lfs {
            Some(lfs) => (
                Some(lfs.size),
                Some(Checksum::Sha256(lfs.sha256.to_ascii_lowercase())),
            ),
            None => (
                sibling.size,
                sibling
                    .blob_id
                    .as_ref()
                    .map(|id| Checksum::GitBlob(id.to_ascii_lowercase())),
            ),
        };
        let Some(size) = size else {
            bail!(
                "the hub's listing of {repo} at {revision} gives no size for {path}; \
                 the endpoint may not be a Hugging Face hub (HF_ENDPOINT)"
            );
        };
        Ok(Remote {
            path: path.clone(),
            size,
            checksum,
        })
    };
    let tokenizer_json = listed("tokenizer/vocab.json")
        .is_none()
        .then(|| listed("tokenizer/tokenizer.json"))
        .flatten();
    let mut files = Vec::new();
    let mut lacking = Vec::new();
    for (pattern, required) in WANTED {
        let path = pattern.replace("{weights}", weights);
        if let Some(sibling) = listed(&path) {
            files.push(remote(sibling)?);
            continue;
        }
        if let Some(stem) = pattern.strip_suffix(".{weights}") {
            let shards = sharded(info, stem, fp16);
            if !shards.is_empty() {
                for sibling in shards {
                    files.push(remote(sibling)?);
                }
                continue;
            }
        }
        if let (Some(json), true) = (tokenizer_json, path.starts_with("tokenizer/")) {
            if !files.iter().any(|f: &Remote| f.path == json.rfilename) {
                files.push(remote(json)?);
            }
            if path.ends_with("vocab.json") || path.ends_with("merges.txt") {
                continue;
            }
        }
        if required {
            lacking.push(path);
        }
    }
    if !lacking.is_empty() {
        let other = if fp16 { "without" } else { "with" };
        let weights_lacking = lacking.iter().any(|p| p.ends_with(".safetensors"));
        bail!(
            "{repo} at {revision} has no {}; a diffusers-layout Stable Diffusion 2.x repository \
             has them all{}",
            lacking.join(", "),
            if weights_lacking {
                format!(" (try {other} --fp16: not every repository has both weight files)")
            } else {
                String::new()
            }
        );
    }
    Ok(files)
}

/// A sharded checkpoint of `stem` in the listing: its index and its shards (none when the
/// index or every shard is missing).
fn sharded<'a>(info: &'a RepoInfo, stem: &str, fp16: bool) -> Vec<&'a Sibling> {
    let (index, shard_prefix) = if fp16 {
        (
            format!("{stem}.safetensors.index.fp16.json"),
            format!("{stem}.fp16-"),
        )
    } else {
        (format!("{stem}.safetensors.index.json"), format!("{stem}-"))
    };
    let Some(index) = info.siblings.iter().find(|s| s.rfilename == index) else {
        return Vec::new();
    };
    let shards: Vec<&Sibling> = info
        .siblings
        .iter()
        .filter(|s| {
            s.rfilename
                .strip_prefix(&shard_prefix)
                .and_then(|rest| rest.strip_suffix(".safetensors"))
                .is_some_and(is_shard_number)
        })
        .collect();
    if shards.is_empty() {
        return Vec::new();
    }
    std::iter::once(index).chain(shards).collect()
}

/// `00001-of-00003`: a shard's place among the shards, as the libraries number them.
fn is_shard_number(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once("-of-")
        .is_some_and(|(k, n)| digits(k) && digits(n))
}

/// How a file differs from what the hub says it is.
#[derive(Debug)]
struct Mismatch {
    what: &'static str,
    expected: String,
    got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its {} is {} where the hub says {}",
            self.what, self.got, self.expected
        )
    }
}

/// Whether the file at `path` is what the hub says `file` is: its size, then its checksum.
fn verify(path: &Path, file: &Remote) -> io::Result<Result<(), Mismatch>> {
    let size = fs::metadata(path)?.len();
    if size != file.size {
        return Ok(Err(Mismatch {
            what: "size",
            expected: format!("{} bytes", file.size),
            got: format!("{size} bytes"),
        }));
    }
    let (what, expected, got) = match &file.checksum {
        None => return Ok(Ok(())),
        Some(Checksum::Sha256(expected)) => {
            ("SHA-256", expected, hash_file(path, sha2::Sha256::new())?)
        }
        Some(Checksum::GitBlob(expected)) => {
            let mut blob = sha1::Sha1::new();
            blob.update(format!("blob {size}\0"));
            ("git blob id", expected, hash_file(path, blob)?)
        }
    };
    if &got != expected {
        return Ok(Err(Mismatch {
            what,
            expected: expected.clone(),
            got,
        }));
    }
    Ok(Ok(()))
}

/// `hasher` fed with the file at `path`, as lowercase hex.
fn hash_file(path: &Path, mut hasher: impl Digest) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The hub's endpoint and the client that talks to it, with the token when there is one.
struct Hub {
    client: Client,
    endpoint: String,
    /// `HF_TOKEN`; sent as a bearer token, never printed.
    token: Option<String>,
}

impl Hub {
    fn from_env() -> anyhow::Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            bail!("HF_ENDPOINT {endpoint:?} is not an http(s) URL; unset it to use {DEFAULT_ENDPOINT}");
        }
        let token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let client = Client::builder()
            .user_agent(concat!("sie/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Blocking reqwest applies this to the request and to each read of the body, not
            // to the whole transfer: a stalled connection fails, a long download does not.
            .timeout(Duration::from_secs(60))
            .build()
            .context("starting the HTTP client")?;
        Ok(Hub {
            client,
            endpoint,
            token,
        })
    }

    fn get(&self, url: &str) -> RequestBuilder {
        let request = self.client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The commit `revision` names in `repo`, and its files.
    fn repo_info(&self, repo: &str, revision: &str) -> anyhow::Result<RepoInfo> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            encode_segment(revision)
        );
        let mut failures = 0;
        let response = loop {
            let failure = match self.get(&url).send() {
                Ok(r) if is_transient(r.status()) => format!("HTTP {}", r.status()),
                Ok(r) => break r,
                Err(e) => error_chain(&e.without_url()),
            };
            failures += 1;
            if failures >= ATTEMPTS {
                bail!("could not reach the hub at {url} ({ATTEMPTS} tries; last: {failure}); check the network, or HF_ENDPOINT");
            }
            eprintln!("{url}: {failure}; trying again");
            std::thread::sleep(backoff(failures));
        };
        let status = response.status();
        if !status.is_success() {
            let what = format!("repository {repo} at revision {revision}");
            return Err(self.refusal(status, &what, &url));
        }
        let info: RepoInfo = response.json().with_context(|| {
            format!("{url} did not answer the hub's JSON; is HF_ENDPOINT a Hugging Face hub?")
        })?;
        // It goes into every file's URL: a commit id and nothing else.
        if info.sha.len() != 40 || !info.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{url} names the commit {:?}, not a 40-digit commit id; is HF_ENDPOINT a \
                 Hugging Face hub?",
                info.sha
            );
        }
        Ok(info)
    }

    /// The error for a refusal `status` from `url` for `what`, and what to do about it.
    fn refusal(&self, status: StatusCode, what: &str, url: &str) -> anyhow::Error {
        let token = if self.token.is_some() {
            "the token in HF_TOKEN"
        } else {
            "no token (HF_TOKEN is not set)"
        };
        match status {
            StatusCode::UNAUTHORIZED => anyhow::anyhow!(
                "the hub refused {what} with {token} (401 from {url}): the repository is \
                 private or gated, or does not exist; set HF_TOKEN to an access token of an \
                 account that can read it, and check the name"
            ),
            StatusCode::FORBIDDEN => anyhow::anyhow!(
                "the hub refused {what} with {token} (403 from {url}): for a gated model, accept \
                 its terms on the model's page with the account whose token is in HF_TOKEN"
            ),
            StatusCode::NOT_FOUND => anyhow::anyhow!(
                "{what} not found (404 from {url}): check the repository's name (owner/name), \
                 --revision (a branch, tag or commit), and HF_ENDPOINT"
            ),
            _ => anyhow::anyhow!("the hub answered {status} for {what} ({url})"),
        }
    }

    /// Fetches `file` of `repo` at commit `sha` into `out`, through `FILE.part`, and moves it
    /// into place once it verifies. `bar` counts from `done`, the bytes of earlier files.
    fn fetch(
        &self,
        repo: &str,
        sha: &str,
        file: &Remote,
        out: &Path,
        bar: &ProgressBar,
        done: u64,
    ) -> anyhow::Result<()> {
        let url = format!("{}/{repo}/resolve/{sha}/{}", self.endpoint, file.path);
        let dest = out.join(&file.path);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let part = part_path(&dest);
        let mut fresh = false;
        loop {
            let resumed = self.download(&url, &part, file, bar, done)?;
            let verdict =
                verify(&part, file).with_context(|| format!("reading {}", part.display()))?;
            match verdict {
                Ok(()) => {
                    fs::rename(&part, &dest).with_context(|| {
                        format!("moving {} to {}", part.display(), dest.display())
                    })?;
                    return Ok(());
                }
                // A partial file left by an earlier run may hold another commit's bytes:
                // fetch the whole file once before calling the download wrong.
                Err(mismatch) if resumed && !fresh => {
                    bar.suspend(|| {
                        eprintln!(
                            "{}: the resumed file {mismatch}; fetching it whole",
                            file.path
                        )
                    });
                    remove_part(&part)?;
                    fresh = true;
                }
                Err(mismatch) => {
                    remove_part(&part)?;
                    bail!(
                        "{} of {repo} does not match the hub's listing after download from {url}: \
                         {} expected {}, got {}; run the command again, and if it persists the \
                         hub or a proxy is serving other bytes",
                        file.path,
                        mismatch.what,
                        mismatch.expected,
                        mismatch.got
                    );
                }
            }
        }
    }

    /// Brings `part` to `file.size` bytes from `url`, continuing what it holds with a Range
    /// request; whether any bytes were kept from before a request (the file was resumed).
    fn download(
        &self,
        url: &str,
        part: &Path,
        file: &Remote,
        bar: &ProgressBar,
        done: u64,
    ) -> anyhow::Result<bool> {
        let mut failures = 0;
        // Bytes already there (a `.part` an earlier run left, even a whole one) are resumed
        // bytes: if they do not verify, the file is fetched whole before anything is blamed.
        let mut resumed = file_len(part)? > 0;
        loop {
            let have = file_len(part)?;
            if have == file.size {
                return Ok(resumed);
            }
            if have > file.size {
                create(part)?;
                continue;
            }
            bar.set_position(done + have);
            let mut request = self.get(url);
            if have > 0 {
                request = request.header(RANGE, format!("bytes={have}-"));
            }
            let failure = match request.send() {
                Err(e) => error_chain(&e.without_url()),
                Ok(response) => {
                    let status = response.status();
                    let append = match status {
                        StatusCode::PARTIAL_CONTENT if range_start(&response) == Some(have) => {
                            resumed |= have > 0;
                            true
                        }
                        StatusCode::PARTIAL_CONTENT => bail!(
                            "{url} answered a range other than the bytes={have}- asked for \
                             ({:?}); delete {} and run the command again",
                            response.headers().get(CONTENT_RANGE),
                            part.display()
                        ),
                        // The server ignored the range (or there was none): start over.
                        StatusCode::OK => false,
                        StatusCode::RANGE_NOT_SATISFIABLE => {
                            // Counted, so a server that refuses every range cannot loop us.
                            failures += 1;
                            pause(bar, &file.path, "HTTP 416", failures, url, part)?;
                            create(part)?;
                            continue;
                        }
                        s if is_transient(s) => {
                            failures += 1;
                            let failure = format!("HTTP {s}");
                            pause(bar, &file.path, &failure, failures, url, part)?;
                            continue;
                        }
                        s => return Err(self.refusal(s, &format!("file {}", file.path), url)),
                    };
                    match write_body(response, part, append, bar, done)? {
                        None => {
                            let now = file_len(part)?;
                            if now > file.size {
                                remove_part(part)?;
                                bail!(
                                    "{url} sent {now} bytes where the hub's listing says {} has {}",
                                    file.path,
                                    file.size
                                );
                            }
                            if now == file.size {
                                continue;
                            }
                            format!("the connection closed after {now} of {} bytes", file.size)
                        }
                        Some(failure) => failure,
                    }
                }
            };
            if file_len(part)? > have {
                failures = 0;
            }
            failures += 1;
            pause(bar, &file.path, &failure, failures, url, part)?;
        }
    }
}

/// After the `failures`-th failure in a row: an error at `ATTEMPTS`, else a note and a wait.
fn pause(
    bar: &ProgressBar,
    path: &str,
    failure: &str,
    failures: u32,
    url: &str,
    part: &Path,
) -> anyhow::Result<()> {
    if failures >= ATTEMPTS {
        bail!(
            "fetching {path} from {url} failed {ATTEMPTS} times in a row (last: {failure}); \
             run the command again to resume from the bytes kept in {}",
            part.display()
        );
    }
    let kept = file_len(part).unwrap_or(0);
    bar.suspend(|| eprintln!("{path}: {failure}; resuming from byte {kept}"));
    std::thread::sleep(backoff(failures));
    Ok(())
}

/// Appends (or, without `append`, writes afresh) `response`'s body to `part`; `None` when
/// the body ended, or what cut it. Errors are the disk's.
fn write_body(
    mut response: Response,
    part: &Path,
    append: bool,
    bar: &ProgressBar,
    done: u64,
) -> anyhow::Result<Option<String>> {
    let file = if append {
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .with_context(|| format!("opening {}", part.display()))?;
    let mut written = file.metadata()?.len();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0; 1 << 16];
    let cut = loop {
        match response.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                out.write_all(&buf[..n])
                    .with_context(|| format!("writing {}", part.display()))?;
                written += n as u64;
                bar.set_position(done + written);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(error_chain(&e)),
        }
    };
    // What arrived before a cut is kept: the next request resumes after it.
    out.flush()
        .with_context(|| format!("writing {}", part.display()))?;
    Ok(cut)
}

/// The first byte of a 206's `Content-Range: bytes FIRST-LAST/TOTAL`.
fn range_start(response: &Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split(['-', '/']).next()?.trim().parse().ok()
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500 << failures.min(4))
}

/// An error with its causes, which reqwest keeps apart ("error decoding response body:
/// unexpected EOF").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A path segment percent-encoded (a revision such as `refs/pr/1` is one segment).
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = OsString::from(dest.as_os_str());
    name.push(".part");
    PathBuf::from(name)
}

/// The length of the file at `path`, 0 when there is none.
fn file_len(path: &Path) -> anyhow::Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Empties (or creates) `path`.
fn create(path: &Path) -> anyhow::Result<()> {
    File::create(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn remove_part(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_blob_id_is_sha1_of_the_header_and_content() {
        // `printf 'hello\n' | git hash-object --stdin`
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "hello\n").unwrap();
        let file = Remote {
            path: "f".into(),
            size: 6,
            checksum: Some(Checksum::GitBlob(
                "ce013625030ba8dba906f756967f9e9ca394464a".into(),
            )),
        };
        assert!(verify(&path, &file).unwrap().is_ok());
        fs::write(&path, "hellO\n").unwrap();
        let mismatch = verify(&path, &file).unwrap().unwrap_err();
        assert_eq!(mismatch.what, "git blob id");
    }

    #[test]
    fn revisions_are_one_path_segment() {
        assert_eq!(encode_segment("main"), "main");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
    }

    #[test]
    fn repository_names_are_owner_slash_name() {
        assert!(check_repo_name("stabilityai/stable-diffusion-2-1-base").is_ok());
        assert!(check_repo_name("gpt2").is_ok());
        for bad in ["a/b/c", "../x", "a//b", "a b/c", ""] {
            assert!(check_repo_name(bad).is_err(), "{bad}");
        }
    }
}
