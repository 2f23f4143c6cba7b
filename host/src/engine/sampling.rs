//! What generation takes and returns, and how the next token is chosen.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use tch::{Device, Kind, Tensor};

use super::FlexError;
use super::LogLine;

/// How the next token is chosen from the last position's logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as `argmax`).
    Greedy,
    /// Drawn from `softmax(logits / temperature)` restricted to the `top_k`
    /// most likely tokens, with a generator seeded by `seed`.
    Sample {
        temperature: f64,
        top_k: Option<i64>,
        seed: u64,
    },
}

/// Options of `FlexModel::generate`.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// End-of-sequence tokens: a sequence that produces one is finished
    /// (its later positions in `tokens` repeat it; `new_tokens` ends with
    /// it), and generation stops when every sequence is. Empty: never stop
    /// early. The CLI takes the model's from `generation_config.json` /
    /// `config.json` ([`crate::models::eos_tokens`]), as transformers does.
    pub eos: Vec<i64>,
    /// Checked by global rank 0 after every step: when it says stop, every
    /// rank ends with [`super::FlexError::Stopped`] (default: never).
    pub halt: super::Halt,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 16,
            sampling: Sampling::Greedy,
            eos: Vec::new(),
            halt: super::Halt::default(),
        }
    }
}

/// What generation returns.
#[derive(Debug)]
pub struct GenerateOutput {
    /// Prompt and new tokens, `[batch, prompt + new]`.
    pub tokens: Tensor,
    /// The new tokens of each sequence.
    pub new_tokens: Vec<Vec<i64>>,
    /// Tensors the hooks emitted, keyed `step{k}/<key>` (step 0: the prompt).
    pub outputs: BTreeMap<String, Tensor>,
    /// Who emitted each output (see [`super::ForwardOutput::producers`]).
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<LogLine>,
}

/// Chooses next tokens; one per generation call (its random stream too).
pub(crate) struct Chooser {
    sampling: Sampling,
    rng: StdRng,
    eos: Vec<i64>,
    done: Vec<bool>,
}

impl Chooser {
    pub fn new(o: &GenerateOptions, batch: usize) -> Result<Chooser, FlexError> {
        if let Sampling::Sample {
            temperature, top_k, ..
        } = &o.sampling
        {
            if !(temperature.is_finite() && *temperature > 0.0) {
                return Err(FlexError::Input(format!(
                    "temperature must be positive, got {temperature}"
                )));
            }
            if top_k.is_some_and(|k| k < 1) {
                return Err(FlexError::Input("top_k must be at least 1".into()));
            }
        }
        let seed = match o.sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Ok(Chooser {
            sampling: o.sampling.clone(),
            rng: StdRng::seed_from_u64(seed),
            eos: o.eos.clone(),
            done: vec![false; batch],
        })
    }

    /// Next token of each sequence from `logits` `[batch, seq, vocab]`.
    pub fn next(&mut self, logits: &Tensor) -> Result<Vec<i64>, FlexError> {
        let last = logits
            .select(1, -1)
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let b = last.size()[0];
        let mut out = Vec::with_capacity(b as usize);
        for i in 0..b {
            let row = last.get(i);
            let tok = if self.done[i as usize] {
                self.eos.first().copied().unwrap_or(0)
            } else {
                match &self.sampling {
                    Sampling::Greedy => row.argmax(0, false).int64_value(&[]),
                    Sampling::Sample {
                        temperature, top_k, ..
                    } => {
                        let scaled = &row / *temperature;
                        let k = top_k.unwrap_or(scaled.size()[0]).min(scaled.size()[0]);
                        let (vals, idx) = scaled.topk(k, 0, true, true);
                        let probs = vals.softmax(0, Kind::Double);
                        let p: Vec<f64> = Vec::<f64>::try_from(&probs)
                            .map_err(|e| FlexError::Input(e.to_string()))?;
                        let u: f64 = self.rng.random();
                        let mut acc = 0.0;
                        let mut pick = p.len() - 1;
                        for (j, q) in p.iter().enumerate() {
                            acc += q;
                            if u < acc {
                                pick = j;
                                break;
                            }
                        }
                        idx.int64_value(&[pick as i64])
                    }
                }
            };
            if self.eos.contains(&tok) {
                self.done[i as usize] = true;
            }
            out.push(tok);
        }
        Ok(out)
    }

    pub fn all_done(&self) -> bool {
        !self.eos.is_empty() && self.done.iter().all(|d| *d)
    }
}

/// Key of a tensor emitted at `step`.
pub(crate) fn step_key(step: usize, key: &str) -> String {
    format!("step{step}/{key}")
}

/// Check the prompt `ids` and return them as `[batch, seq]`.
pub(crate) fn prompt_ids(input_ids: &Tensor) -> Result<Tensor, FlexError> {
    let ids = super::batch_ids(input_ids)?;
    if ids.size()[1] == 0 {
        return Err(FlexError::Input("the prompt has no tokens".into()));
    }
    Ok(ids)
}
