//! Per-block timings of the networks, off unless asked for (`sie bench unet|vae --blocks`,
//! through `sie_engine::bench::profile`).
//!
//! It sits with the networks because they are what it times: they wrap each block's call
//! in `time`. While nothing records, that is one thread-local check per block. When the
//! calling thread has started a recording, each call waits for the device to finish (so a
//! GPU's queued kernels are counted where they belong) and adds its time to the block's
//! entry; entries keep the order they first ran in. The networks' levels have entries of
//! their own (`down.0.resnets`, `mid.transformer`, ...); the parts inside a kind of block
//! have entries summed over every block of that kind (`transformer/self-attention`,
//! `resnet/conv`, ...), whose time is also in the levels'.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use candle_core::{Result, Tensor};

/// One block's total over the recording.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub total: Duration,
    pub calls: usize,
}

thread_local! {
    static RECORDING: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

/// Starts recording the blocks this thread runs (dropping any recording in progress).
pub fn start() {
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// Stops recording; what was recorded, in first-run order (empty if nothing was started).
pub fn finish() -> Vec<Entry> {
    RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default()
}

/// Runs `block`, adding its time to the entry `name()` names while this thread records.
pub(crate) fn time(
    name: impl FnOnce() -> String,
    block: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    if RECORDING.with(|r| r.borrow().is_none()) {
        return block();
    }
    let start = Instant::now();
    let out = block()?;
    out.device().synchronize()?;
    let elapsed = start.elapsed();
    let name = name();
    RECORDING.with(|r| {
        if let Some(entries) = r.borrow_mut().as_mut() {
            match entries.iter_mut().find(|e| e.name == name) {
                Some(e) => {
                    e.total += elapsed;
                    e.calls += 1;
                }
                None => entries.push(Entry {
                    name,
                    total: elapsed,
                    calls: 1,
                }),
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn records_only_while_started() -> Result<()> {
        let one = || Tensor::ones(4, candle_core::DType::F32, &Device::Cpu);
        time(|| "before".into(), one)?;
        start();
        for _ in 0..3 {
            time(|| "a".into(), || time(|| "a/b".into(), one))?;
        }
        time(|| "c".into(), one)?;
        let entries = finish();
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.calls)).collect();
        assert_eq!(names, [("a/b", 3), ("a", 3), ("c", 1)]);
        time(|| "after".into(), one)?;
        assert!(finish().is_empty());
        Ok(())
    }
}
