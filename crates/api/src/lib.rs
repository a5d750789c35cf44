//! The SIE wire protocol, shared by the API server and the workers.
//!
//! # Layout
//! - [`request`]: a create-task body parsed once, at the edge, into types that
//!   cannot hold an invalid value; the worker runs exactly that type (it
//!   round-trips through the queue as JSON and is re-validated on the way in).
//!   Its images are decoded in a second stage ([`request::Undecoded`]), after
//!   everything that needs no pixels is decided.
//! - `json.rs`: the body read as JSON strictly (a key given twice is refused).
//! - [`problem`]: RFC 7807 problem documents with a stable machine `code`.
//! - [`worker`]: the bodies of the worker protocol (`/worker/v1`).
//! - [`answers`]: what the public routes answer (202, task status, list, usage, health).
//! - [`schema`]: the OpenAPI schemas a derive cannot write (ranges, names, the checker
//!   switch), from the same constants the parser uses.
//!
//! This crate knows nothing of HTTP servers, storage or tensors, so the API,
//! the store and the engine can all depend on it without depending on each other.

pub mod answers;
mod json;
pub mod problem;
pub mod request;
pub mod schema;
pub mod worker;

pub use problem::Problem;

/// The seed document's example request, as it shows it (its trailing comma removed, which
/// JSON does not allow): what the README's `curl` sends, what `sie serve` prints on first
/// start, and what the tests send to check the whole path.
pub const SEED_EXAMPLE: &str = r#"{
  "modelInputs": {
    "prompt": "An oil painting of a salad",
    "num_inference_steps": 50,
    "guidance_scale": 20,
    "width": 512,
    "height": 512
  },
  "callInputs": {
    "PIPELINE": "StableDiffusionPipeline",
    "SCHEDULER": "LMSDiscreteScheduler",
    "safety_checker": "true"
  }
}"#;
pub use request::{CreateTask, RequestError, Undecoded};
