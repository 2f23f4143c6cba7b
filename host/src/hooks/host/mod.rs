//! Host side of the WIT interfaces, one module per interface, implemented on
//! [`HostState`](super::store::HostState).

mod generation;
mod log;
mod output;
mod pass;
mod random;
mod state;
mod tensor;
mod tokens;
mod types;

pub(crate) use tensor::add_zero_copy_bytes;
pub(crate) use types::{from_wit_slice, to_wit_dtype};
