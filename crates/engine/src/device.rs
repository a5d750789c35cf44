//! Where the engine runs, as an operator names it: `cpu`, `cuda` or `cuda:N`, and in which
//! precision. Parsed once at the edge of every command that generates, and opened here, so
//! a device that cannot be used is refused at start with what is missing, never replaced
//! by the CPU behind the operator's back.
//!
//! A build without the `cuda` feature still parses `cuda` (so the refusal can say which
//! build this is), and refuses to open it.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// A device as named on the command line (`--device`, `SIE_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// The CUDA device with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// The precision a device runs in unless told otherwise: float16 on a GPU (as diffusers
    /// is run there), float32 on the CPU (the only one our CPU kernels take).
    pub fn default_precision(self) -> Precision {
        match self {
            DeviceSpec::Cpu => Precision::Float32,
            DeviceSpec::Cuda(_) => Precision::Float16,
        }
    }

    /// Opens the device for `precision`, or says what is missing: a build without the
    /// `cuda` feature, a driver or GPU that does not answer, a precision the device does
    /// not run.
    pub fn open(self, precision: Precision) -> Result<Device> {
        match self {
            DeviceSpec::Cpu if precision != Precision::Float32 => Err(Error::Device(format!(
                "--dtype {precision} on the CPU: the CPU runs float32 only; use --dtype float32 \
                 (or leave it out)"
            ))),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Device(format!(
            "the GPU could not be opened ({e}); check that `nvidia-smi` lists a GPU with \
             index {ordinal} and that the NVIDIA driver's libcuda.so.1 and the CUDA 13 \
             libraries (libcudart, libcublas, libcublasLt, libcurand, libnvrtc, libcudnn) are \
             on the library path"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::Device(
        "this sie was built without CUDA support (the `cuda` feature); build one with \
         tools/gpu/build.sh, or run on the CPU with --device cpu"
            .into(),
    ))
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let refuse =
            || format!("\"{s}\" is not a device; accepted: cpu, cuda, cuda:N (N a GPU index)");
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(refuse),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The precision the networks run in (`--dtype`), spelled as PyTorch spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Float32,
    Float16,
    BFloat16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::Float32 => DType::F32,
            Precision::Float16 => DType::F16,
            Precision::BFloat16 => DType::BF16,
        }
    }

    /// The name of a network dtype, as `$meta` and `sie bench` report it.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Precision::Float32),
            DType::F16 => Some(Precision::Float16),
            DType::BF16 => Some(Precision::BFloat16),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Float16 => "float16",
            Precision::BFloat16 => "bfloat16",
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "float32" => Ok(Precision::Float32),
            "float16" => Ok(Precision::Float16),
            "bfloat16" => Ok(Precision::BFloat16),
            _ => Err(format!(
                "\"{s}\" is not a dtype; accepted: float32, float16, bfloat16"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a loaded model runs on, for operators (logs, the worker's announcement, `$meta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunsOn {
    /// The GPU's name as its driver reports it (`NVIDIA H200`), or `cpu`.
    pub device: String,
    pub precision: Precision,
    /// The GPU's memory; `None` on the CPU.
    pub memory_bytes: Option<u64>,
}

impl RunsOn {
    /// `device` running in `dtype`; a GPU's name and memory come from its driver.
    pub fn of(device: &Device, dtype: DType) -> Self {
        let precision = Precision::of(dtype).unwrap_or(Precision::Float32);
        let (device, memory_bytes) = match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu) => {
                let stream = gpu.cuda_stream();
                let context = stream.context();
                let name = context
                    .name()
                    .unwrap_or_else(|e| format!("CUDA device ({e})"));
                (name, context.total_mem().ok().map(|m| m as u64))
            }
            _ => ("cpu".to_owned(), None),
        };
        RunsOn {
            device,
            precision,
            memory_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_precisions_parse_as_operators_write_them() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("accepted: cpu, cuda, cuda:N"), "{e}");
        }
        assert_eq!(DeviceSpec::Cuda(0).default_precision(), Precision::Float16);
        assert_eq!(DeviceSpec::Cpu.default_precision(), Precision::Float32);
        assert_eq!("bfloat16".parse(), Ok(Precision::BFloat16));
        assert!("fp16".parse::<Precision>().unwrap_err().contains("float16"));
    }

    #[test]
    fn the_cpu_refuses_half_precision_and_opens_in_float32() {
        let e = DeviceSpec::Cpu
            .open(Precision::Float16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("float32 only"), "{e}");
        assert!(DeviceSpec::Cpu.open(Precision::Float32).unwrap().is_cpu());
        let runs_on = RunsOn::of(&Device::Cpu, DType::F32);
        assert_eq!(
            (runs_on.device.as_str(), runs_on.memory_bytes),
            ("cpu", None)
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_so() {
        let e = DeviceSpec::Cuda(0)
            .open(Precision::Float16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built without CUDA support") && e.contains("tools/gpu/build.sh"),
            "{e}"
        );
    }
}
