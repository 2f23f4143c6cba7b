//! `flexmodel:hook/types`: only data, plus conversions between the generated
//! WIT types and the host's own.

use crate::hooks::activation::{AccessError, DType};
use crate::hooks::bindings::wit_types as wit;
use crate::hooks::slice::DimRange;
use crate::hooks::store::HostState;

impl wit::Host for HostState {}

pub(crate) fn from_wit_slice(s: &[wit::DimRange]) -> Vec<DimRange> {
    s.iter()
        .map(|r| DimRange {
            start: r.start,
            stop: r.stop,
            step: r.step,
        })
        .collect()
}

pub(crate) fn to_wit_dtype(d: DType) -> wit::Dtype {
    match d {
        DType::F32 => wit::Dtype::F32,
        DType::F16 => wit::Dtype::F16,
        DType::BF16 => wit::Dtype::Bf16,
    }
}

pub(crate) fn from_wit_dtype(d: wit::Dtype) -> DType {
    match d {
        wit::Dtype::F32 => DType::F32,
        wit::Dtype::F16 => DType::F16,
        wit::Dtype::Bf16 => DType::BF16,
    }
}

impl From<AccessError> for wit::HookError {
    fn from(e: AccessError) -> Self {
        wit::HookError::InvalidArgument(e.0)
    }
}
