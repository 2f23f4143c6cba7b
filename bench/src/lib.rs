//! The benchmark binaries of FlexModel-rs (`hook-bench`, `model-bench`,
//! `dist-bench`, `gen-bench`, `data-bench`, `service-bench`; `scripts/bench.sh` runs them all), kept out of
//! the product crate. What they share lives here.

pub mod corpus;
pub mod languages;
pub mod place;
pub mod report;
pub mod service;
pub mod worker;
