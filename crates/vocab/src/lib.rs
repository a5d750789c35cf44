//! The vocabulary of `sie`: the names a client, the queue, a worker and the engine
//! all use, defined once.
//!
//! A pipeline, a scheduler or an image format is spelled in the request, matched by
//! the store against what a worker announced, and built by the engine. When each of
//! those kept its own list, a name could be accepted at the door that no worker could
//! build; here there is one enum per word, with one parser and one wording of the
//! refusal, and every crate takes these types instead of strings.
//!
//! # Layout
//! - [`names`]: [`Pipeline`], [`SchedulerKind`], [`ImageFormat`] and [`UnknownName`].
//! - [`capabilities`]: [`TaskNeeds`] (what a task asks of its worker) and
//!   [`Capabilities`] (what a worker can run), with the one matching rule.
//!
//! This crate depends on nothing of the others (serde only), so the wire protocol,
//! the store and the engine can all use it without depending on each other.

pub mod capabilities;
pub mod names;

pub use capabilities::{Capabilities, TaskNeeds};
pub use names::{ImageFormat, Pipeline, SchedulerKind, UnknownName};
