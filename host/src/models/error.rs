//! Errors of checkpoint loading and model execution.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {file}: {message}")]
    Config { file: String, message: String },
    #[error(
        "unsupported architecture {0:?} (supported: `gpt2`, `gpt_neox`, `llama`, `mistral`, `qwen2`)"
    )]
    UnsupportedArchitecture(String),
    #[error("checkpoint is missing tensor `{name}` (needed by {needed_by})")]
    MissingTensor { name: String, needed_by: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("unsupported dtype {0}")]
    UnsupportedDtype(String),
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors { path: String, message: String },
    #[error("invalid input: {0}")]
    Input(String),
    /// A hook failed (the hook layer's error, boxed: models do not depend on it).
    #[error(transparent)]
    Hook(Box<dyn std::error::Error + Send + Sync>),
    /// A collective of the distributed engine failed (its error, boxed).
    #[error(transparent)]
    Comm(Box<dyn std::error::Error + Send + Sync>),
    /// Not a failure: the hook site asked the forward to stop after this point.
    #[error("forward stopped after {0}")]
    Stopped(String),
    /// The hook site's interrupt asked the pass to end (not a failure of
    /// the model).
    #[error("interrupted")]
    Interrupted,
    #[error("forward failed inside libtorch: {0}")]
    Internal(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}
