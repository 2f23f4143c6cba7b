//! The element types a hook may see (the WIT `dtype` enum) and their tch kinds.

use tch::Kind;

/// Element type of an activation, as in the WIT `dtype` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn from_kind(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Float => Some(DType::F32),
            Kind::Half => Some(DType::F16),
            Kind::BFloat16 => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
        }
    }
}
