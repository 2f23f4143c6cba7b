//! Generation with a key/value cache on any mesh, hooks firing at every
//! step: the prompt first (step 0), then one token per step. Hooks see the
//! step and the position in their call context (`CallContext::generation`),
//! so a steering hook can act on new tokens only and a retrieval hook
//! collects per-step activations (output keys `step{k}/<point>`). Every rank
//! runs each step; global rank 0 chooses the next tokens and shares them.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

use super::batch::Batch;
use super::forward::{Collect, Pass};
use super::sampling::{Chooser, GenerateOptions, GenerateOutput, prompt_ids, step_key};
use super::site::RunBudget;
use super::{Engine, FlexError, Groups, LogLine, Registration};
use crate::hooks::GenStep;
use crate::models::KvCache;

/// What global rank 0 decided after a step.
enum Next {
    /// The next token of every sequence, and whether all are finished.
    Tokens(Vec<i64>, bool),
    /// Stop here (the options' [`super::Halt`] said why).
    Halt(String),
}

/// What the steps so far produced (at global rank 0).
#[derive(Default)]
struct Collected {
    outputs: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
    logs: Vec<LogLine>,
}

impl Engine {
    /// Generate after the prompts of `batch` (the same on every rank; a
    /// padded batch is padded on the left, so every row ends at its last
    /// real token), forward numbers `first_index..`: rank 0 calls
    /// `on_token` with each step's tokens and returns the output, the
    /// others `None`.
    pub(crate) fn generate(
        &mut self,
        batch: &Batch,
        regs: &[Registration],
        groups: &Groups,
        first_index: u64,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<Option<GenerateOutput>, FlexError> {
        let batch = batch.left_padded()?;
        let ids = prompt_ids(&batch.ids)?;
        let mut valid = batch.attention_mask;
        let b = ids.size()[0] as usize;
        let root = self.global_rank() == 0;
        let mut chooser = Chooser::new(opts, b)?;
        let mut cache = KvCache::new();
        let mut tokens = ids.to_device(Device::Cpu);
        let mut new_tokens = vec![Vec::new(); b];
        let mut got = Collected::default();
        let mut input = ids;
        // One budget for the whole generation: the caps span all steps.
        let mut budget = RunBudget::new(self.limits);
        for step in 0..opts.max_new_tokens {
            let pass = Pass {
                index: first_index + step as u64,
                step: Some(GenStep {
                    step: step as u64,
                    position: cache.len() as u64,
                }),
                stop: None,
                cache: Some(&mut cache),
                budget: &mut budget,
                valid: valid.as_ref(),
                collect: Collect::Root,
            };
            let out = match self.forward(&input, regs, groups, pass) {
                Ok(o) => o,
                Err(e) => return Err(with_earlier_steps(e, step, got.outputs)),
            };
            // Rank 0 picks the next tokens and tells everyone.
            let chosen = match out {
                Some(o) if root => {
                    for (k, v) in o.outputs {
                        got.outputs.insert(step_key(step, &k), v);
                    }
                    for (k, v) in o.producers {
                        got.producers.insert(step_key(step, &k), v);
                    }
                    got.logs.extend(o.logs);
                    let logits = o.logits.ok_or_else(|| FlexError::Rank {
                        rank: 0,
                        message: "no logits reached rank 0".into(),
                    })?;
                    let next = chooser.next(&logits)?;
                    on_token(step, &next);
                    Some(match opts.halt.reason() {
                        Some(why) => Next::Halt(why),
                        None => Next::Tokens(next, chooser.all_done()),
                    })
                }
                _ => None,
            };
            let (next, done) = self.share_tokens(chosen, b)?;
            for (row, t) in new_tokens.iter_mut().zip(&next) {
                // A finished sequence's list ends with its end token.
                if row.last().is_none_or(|l| !opts.eos.contains(l)) {
                    row.push(*t);
                }
            }
            let col = Tensor::from_slice(&next).view([b as i64, 1]);
            tokens = Tensor::cat(&[&tokens, &col], 1);
            valid = valid.map(|v| Tensor::cat(&[&v, &col.ones_like()], 1));
            if done {
                break;
            }
            input = col;
        }
        Ok(root.then_some(GenerateOutput {
            tokens,
            new_tokens,
            outputs: got.outputs,
            producers: got.producers,
            logs: got.logs,
        }))
    }

    /// Rank 0's choice of the next `b` tokens (and whether generation is
    /// done), or its order to stop, on every rank.
    fn share_tokens(&self, chosen: Option<Next>, b: usize) -> Result<(Vec<i64>, bool), FlexError> {
        if self.alone() {
            return match chosen {
                Some(Next::Tokens(next, done)) => Ok((next, done)),
                Some(Next::Halt(why)) => Err(FlexError::Stopped(why)),
                None => Err(FlexError::Rank {
                    rank: 0,
                    message: "no tokens chosen".into(),
                }),
            };
        }
        // [0 | 1 (done)] + tokens, or [2] + why it stops.
        let msg = chosen.map(|c| {
            let m = match c {
                Next::Tokens(next, done) => {
                    let mut m = vec![u8::from(done)];
                    m.extend(next.iter().flat_map(|t| t.to_le_bytes()));
                    m
                }
                Next::Halt(why) => [&[2u8][..], why.as_bytes()].concat(),
            };
            bytes::Bytes::from(m)
        });
        let m = self.groups.world.broadcast_bytes(msg, 0)?;
        if m.first() == Some(&2) {
            return Err(FlexError::Stopped(
                String::from_utf8_lossy(&m[1..]).into_owned(),
            ));
        }
        let next: Vec<i64> = m
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if next.len() != b {
            return Err(FlexError::Rank {
                rank: 0,
                message: format!("sent {} next tokens for {b} sequences", next.len()),
            });
        }
        Ok((next, m.first() == Some(&1)))
    }
}

/// A failed step's error with the earlier steps' outputs kept too.
fn with_earlier_steps(e: FlexError, step: usize, earlier: BTreeMap<String, Tensor>) -> FlexError {
    match e {
        FlexError::Hook { error, partial } => {
            let mut all = earlier;
            for (k, v) in partial.into_inner().unwrap_or_default() {
                all.insert(step_key(step, &k), v);
            }
            FlexError::Hook {
                error,
                partial: std::sync::Mutex::new(all),
            }
        }
        e => e,
    }
}
