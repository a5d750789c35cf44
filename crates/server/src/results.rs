//! Finished results, served to pollers without a copy per request.
//!
//! A result is the worker's `modelOutputs`, stored once as JSON text; eight 1024x1024
//! images make it about 31 MB. Reading it from the store, parsing it and writing it out
//! again for every GET made three copies per poller, so sixty pollers held gigabytes.
//! Instead a finished result is immutable, so it is kept as one shared, reference-counted
//! buffer ([`Bytes`]) in a cache with a byte budget, least recently used out first, and
//! each answer is that buffer between two short slices of JSON ([`Chunks`]), written to
//! the socket as it stands. A miss reads the store once per result: the other requests
//! for the same result wait for that read and take what it cached; and at most
//! [`MISSES_AT_ONCE`] different results are read at once. The stored text is never parsed
//! here; the worker protocol typed it on the way in (`docs/security.md` says why this
//! beats streaming it from the database).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use sie_store::{OrgId, TaskId};
use tokio::sync::Semaphore;

use crate::{ApiError, AppState};

/// Store reads of different results at once: each can be tens of megabytes, and reading
/// one holds it twice for a moment (the database's copy and ours).
pub const MISSES_AT_ONCE: usize = 4;

type Key = (OrgId, TaskId);

/// The results being read from the store, each with the lock its readers queue on.
type Readers = Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>>;

/// Finished results in memory, within a byte budget.
pub(crate) struct ResultCache {
    budget: u64,
    entries: Mutex<Lru>,
    misses: Semaphore,
    /// One reads each result; the others queue on its lock and find its copy cached.
    reading: Readers,
}

/// The cache's contents: each result with the tick of its last use, and the ticks in
/// order, oldest first, for eviction.
#[derive(Default)]
struct Lru {
    by_task: HashMap<Key, (Bytes, u64)>,
    by_use: BTreeMap<u64, Key>,
    bytes: u64,
    tick: u64,
}

impl ResultCache {
    pub fn new(budget: u64) -> Self {
        ResultCache {
            budget,
            entries: Mutex::new(Lru::default()),
            misses: Semaphore::new(MISSES_AT_ONCE),
            reading: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock leaves the maps consistent (each change is
        // made whole), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: Key) -> Option<Bytes> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (bytes, used) = lru.by_task.get_mut(&key)?;
        let (bytes, last) = (bytes.clone(), std::mem::replace(used, tick));
        lru.by_use.remove(&last);
        lru.by_use.insert(tick, key);
        Some(bytes)
    }

    /// Keeps `bytes` for `key`, evicting the least recently used results to stay within
    /// the budget; a result larger than the whole budget is not kept.
    fn insert(&self, key: Key, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget {
            return;
        }
        let mut lru = self.lock();
        if lru.by_task.contains_key(&key) {
            return;
        }
        while lru.bytes + size > self.budget {
            let Some((_, oldest)) = lru.by_use.pop_first() else {
                break;
            };
            if let Some((gone, _)) = lru.by_task.remove(&oldest) {
                lru.bytes -= gone.len() as u64;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.by_use.insert(tick, key);
        lru.by_task.insert(key, (bytes, tick));
        lru.bytes += size;
    }

    /// Forgets a result (its task expired).
    pub fn remove(&self, org: OrgId, id: TaskId) {
        let mut lru = self.lock();
        if let Some((gone, used)) = lru.by_task.remove(&(org, id)) {
            lru.by_use.remove(&used);
            lru.bytes -= gone.len() as u64;
        }
    }

    /// The stored `modelOutputs` of the succeeded task `id` of `org`, from memory or else
    /// from the store; `None` when the store has none (it expired meanwhile).
    pub async fn outputs(
        &self,
        state: &AppState,
        org: OrgId,
        id: TaskId,
    ) -> Result<Option<Bytes>, ApiError> {
        let key = (org, id);
        if let Some(hit) = self.get(key) {
            return Ok(Some(hit));
        }
        let reading = Reading::join(&self.reading, key);
        let _mine = reading.lock.lock().await;
        // Whoever read it while this call waited has cached it (unless it is larger than
        // the whole cache: then each reads it in turn).
        if let Some(hit) = self.get(key) {
            return Ok(Some(hit));
        }
        let _turn = self
            .misses
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("the result cache was closed".into()))?;
        let Some(text) = state.store(move |s| s.result(org, id)).await? else {
            return Ok(None);
        };
        // `String` to `Bytes` takes over its buffer: the one copy this result has in memory.
        let bytes = Bytes::from(text);
        self.insert(key, bytes.clone());
        Ok(Some(bytes))
    }
}

/// A place in the queue of readers of one result; the last to leave removes the queue.
struct Reading {
    all: Readers,
    key: Key,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reading {
    fn join(all: &Readers, key: Key) -> Self {
        let lock = all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Reading {
            all: all.clone(),
            key,
            lock,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and this one: nobody else is waiting.
        if Arc::strong_count(&self.lock) == 2 {
            all.remove(&self.key);
        }
    }
}

/// The pieces of SPEC 1.2's success body, `{"requestId":…,"status":"success",
/// "modelOutputs":…}`: the stored outputs between two slices of JSON, not copied.
pub(crate) fn success_parts(id: TaskId, outputs: Bytes) -> [Bytes; 3] {
    let head = format!(r#"{{"requestId":"{id}","status":"success","modelOutputs":"#);
    [Bytes::from(head), outputs, Bytes::from_static(b"}")]
}

/// SPEC 1.2's success body ([`success_parts`]) as a response, without copying the outputs.
pub(crate) fn success(id: TaskId, outputs: Bytes) -> Response {
    let body = Chunks::new(success_parts(id, outputs));
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A body made of a few buffers, sent one after another with their total as its length.
pub(crate) struct Chunks {
    parts: VecDeque<Bytes>,
    left: u64,
}

impl Chunks {
    pub fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|b| !b.is_empty()).collect();
        let left = parts.iter().map(|b| b.len() as u64).sum();
        Chunks { parts, left }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.parts.pop_front().map(|part| {
            self.left -= part.len() as u64;
            Ok(Frame::data(part))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn key(n: i64) -> Key {
        (OrgId::parse(&n.to_string()).unwrap(), TaskId::random())
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let cache = ResultCache::new(10);
        let (a, b, c) = (key(1), key(1), key(2));
        cache.insert(a, Bytes::from_static(b"aaaa"));
        cache.insert(b, Bytes::from_static(b"bbbb"));
        assert!(cache.get(a).is_some(), "a is now the most recently used");
        cache.insert(c, Bytes::from_static(b"cccc"));
        assert!(cache.get(b).is_none(), "b was the least recently used");
        assert_eq!(cache.get(a).as_deref(), Some(&b"aaaa"[..]));
        assert_eq!(cache.get(c).as_deref(), Some(&b"cccc"[..]));
        assert_eq!(cache.lock().bytes, 8);
        cache.insert(key(3), Bytes::from(vec![0; 11]));
        assert_eq!(
            cache.lock().bytes,
            8,
            "a result over the budget is not kept"
        );
        cache.remove(a.0, a.1);
        assert!(cache.get(a).is_none());
        assert_eq!(cache.lock().bytes, 4);
        // The key is the organization and the task together.
        assert!(cache.get((OrgId::parse("9").unwrap(), c.1)).is_none());
    }

    #[tokio::test]
    async fn a_success_body_is_the_stored_outputs_between_two_slices() {
        let id = TaskId::random();
        let outputs = Bytes::from_static(br#"{"images":["aGk="],"seed":1}"#);
        let length = body_len(id, outputs.len() as u64);
        let body = success(id, outputs).into_body();
        assert_eq!(body.size_hint().exact(), Some(length));
        let text = body.collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["requestId"], id.to_string());
        assert_eq!(v["status"], "success");
        assert_eq!(v["modelOutputs"]["seed"], 1);
    }

    fn body_len(id: TaskId, outputs: u64) -> u64 {
        format!(r#"{{"requestId":"{id}","status":"success","modelOutputs":"#).len() as u64
            + outputs
            + 1
    }
}
