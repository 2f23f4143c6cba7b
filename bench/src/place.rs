//! Where a benchmark runs: `--device cpu|cuda[:N]` and `--dtype
//! f32|bf16|f16`, for our side and the PyTorch worker's alike (the worker
//! reads `FLEXMODEL_BENCH_DEVICE` / `FLEXMODEL_BENCH_DTYPE`).

use std::process::Command;

use anyhow::{Result, bail};
use tch::{Device, Kind};

#[derive(Debug, Clone)]
pub struct Place {
    pub device: Device,
    pub kind: Kind,
    /// As given (`cuda:0`, `bf16`), for the worker and the report.
    pub device_name: String,
    pub dtype_name: String,
}

impl Default for Place {
    fn default() -> Self {
        Place {
            device: Device::Cpu,
            kind: Kind::Float,
            device_name: "cpu".into(),
            dtype_name: "f32".into(),
        }
    }
}

impl Place {
    pub fn set_device(&mut self, s: &str) -> Result<()> {
        self.device = match s {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Device::Cuda(n),
                None => bail!("--device {s:?}: cpu, cuda or cuda:N"),
            },
        };
        if self.device.is_cuda() && !flexmodel::models::cuda::available() {
            bail!("--device {s}: libtorch sees no CUDA device here");
        }
        self.device_name = s.into();
        Ok(())
    }

    pub fn set_dtype(&mut self, s: &str) -> Result<()> {
        self.kind = match s {
            "f32" => Kind::Float,
            "bf16" => Kind::BFloat16,
            "f16" => Kind::Half,
            _ => bail!("--dtype {s:?}: f32, bf16 or f16"),
        };
        self.dtype_name = s.into();
        Ok(())
    }

    /// Wait for the device's queued work (a CUDA forward returns before
    /// its kernels ran).
    pub fn sync(&self) {
        if let Device::Cuda(n) = self.device {
            tch::Cuda::synchronize(n as i64);
        }
    }

    /// The PyTorch worker runs on the same device and dtype.
    pub fn on(&self, cmd: &mut Command) {
        cmd.env("FLEXMODEL_BENCH_DEVICE", &self.device_name)
            .env("FLEXMODEL_BENCH_DTYPE", &self.dtype_name);
    }

    /// "bf16 on cuda" for reports.
    pub fn label(&self) -> String {
        format!("{} on {}", self.dtype_name, self.device_name)
    }
}
