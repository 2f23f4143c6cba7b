//! The passes of a [`FlexModel`]: forward, forward-until, generation and
//! backward, the same on every layout.

use std::sync::Arc;
use std::sync::mpsc::channel;

use super::Reply;
use super::facade::{FlexModel, Ranks};
use super::threads::Job;
use crate::engine::{
    BackwardOutput, Batch, Collect, FlexError, ForwardOutput, GenerateOptions, GenerateOutput,
    Groups, Input, Loss, RankBackward, RunOutput, StoppedOutput, text_ids,
};
use crate::models::PointPattern;

/// The merged result among every rank's (global rank 0's); with errors, the
/// first rank's; `NotRoot` on another rank of a launched job.
fn root<T>(each: Vec<Result<Option<T>, FlexError>>, rank: usize) -> Result<T, FlexError> {
    let mut out = None;
    for r in each {
        if let Some(o) = r? {
            out = Some(o);
        }
    }
    out.ok_or(FlexError::NotRoot { rank })
}

/// One rank's result of a forward: its output where merged, or its error.
type RankResult = Result<Option<RunOutput>, FlexError>;

impl FlexModel {
    /// Run a forward on `input` (token ids `[batch, seq]` or `[seq]`,
    /// int64, or a padded [`Batch`]) with the hooks `groups` enables; the
    /// merged result (global rank 0's).
    pub fn forward(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        let each = self.run_forward(&input.to_batch()?, groups, None, Collect::Root)?;
        root(each, self.global_rank())?.into_forward()
    }

    /// Like [`Self::forward`], with the result of every rank this process
    /// runs (all of them in global rank order, or its own rank of a
    /// launched job): the merged output at rank 0, `None` at the others, or
    /// each rank's error.
    pub fn forward_each(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
    ) -> Result<Vec<Reply>, FlexError> {
        let each = self.run_forward(&input.to_batch()?, groups, None, Collect::Root)?;
        Ok(each
            .into_iter()
            .map(|r| r.and_then(|o| o.map(RunOutput::into_forward).transpose()))
            .collect())
    }

    /// Tokenize `text` with the model's tokenizer and run [`Self::forward`].
    pub fn forward_text(
        &mut self,
        text: &str,
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        let ids = text_ids(self.tokenizer.as_ref(), text)?;
        self.forward(&ids, groups)
    }

    /// Run the forward only up to the hook point `stop_after` (a name, alias
    /// or pattern; with several matches, the last in forward order), after its
    /// hooks ran: for retrieving activations without paying for the rest of
    /// the model (TransformerLens' `stop_at_layer`). No logits are computed;
    /// on a mesh, later pipeline stages do not run.
    pub fn forward_until(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        stop_after: &str,
    ) -> Result<StoppedOutput, FlexError> {
        let (stop, each) = self.run_until(input, groups, stop_after, Collect::Root)?;
        Ok(root(each, self.global_rank())?.into_stopped(stop))
    }

    /// [`Self::forward_until`] with each data-parallel replica's results
    /// kept at that replica's first rank (its own rows; nothing crosses
    /// between replicas): `(replica, its output)` for each replica whose
    /// first rank this process runs (every replica when the ranks are
    /// threads; one or none on a rank of a launched job).
    pub fn forward_until_replicas(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        stop_after: &str,
    ) -> Result<Vec<(usize, StoppedOutput)>, FlexError> {
        let (stop, each) = self.run_until(input, groups, stop_after, Collect::Replica)?;
        let mesh = self.options().mesh;
        let first = self.global_rank();
        let mut out = Vec::new();
        for (i, r) in each.into_iter().enumerate() {
            if let Some(o) = r? {
                out.push((mesh.coords(first + i).dp, o.into_stopped(stop.clone())));
            }
        }
        Ok(out)
    }

    /// The forward stopped after the last point `stop_after` selects: that
    /// point's canonical name and every rank's result.
    fn run_until(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        stop_after: &str,
        collect: Collect,
    ) -> Result<(String, Vec<RankResult>), FlexError> {
        let points = PointPattern::new(stop_after)?.select(&self.points)?;
        let stop = points.last().cloned().unwrap_or_default();
        let each = self.run_forward(&input.to_batch()?, groups, Some(stop.clone()), collect)?;
        Ok((stop, each))
    }

    fn run_forward(
        &mut self,
        batch: &Batch,
        groups: &Groups,
        stop: Option<String>,
        collect: Collect,
    ) -> Result<Vec<RankResult>, FlexError> {
        let index = self.forward_index;
        self.forward_index += 1;
        match &mut self.ranks {
            Ranks::Here { engine, .. } => Ok(vec![engine.forward_once(
                batch,
                &self.registry.regs,
                groups,
                index,
                stop.as_deref(),
                collect,
            )]),
            Ranks::Threads(pool) => {
                let regs = Arc::new(self.registry.regs.clone());
                pool.run("the forward", |reply| Job::Forward {
                    batch: batch.copy(),
                    regs: regs.clone(),
                    groups: groups.clone(),
                    index,
                    stop: stop.clone(),
                    collect,
                    reply,
                })
            }
        }
    }

    /// Generate up to `opts.max_new_tokens` tokens after `input_ids`
    /// (`[seq]` or `[batch, seq]`) with a key/value cache, the hooks `groups`
    /// enables firing at every step (`CallContext::generation` says which);
    /// `on_token(step, tokens)` gets each step's new token per sequence as
    /// global rank 0 chooses them.
    pub fn generate(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<GenerateOutput, FlexError> {
        let batch = input.to_batch()?;
        let index = self.forward_index;
        self.forward_index += opts.max_new_tokens as u64;
        let rank = self.global_rank();
        let each = match &mut self.ranks {
            Ranks::Here { engine, .. } => {
                vec![engine.generate(&batch, &self.registry.regs, groups, index, opts, on_token)]
            }
            Ranks::Threads(pool) => {
                let regs = Arc::new(self.registry.regs.clone());
                let (stream_tx, stream_rx) = channel();
                let replies = pool.send(|reply| Job::Generate {
                    batch: batch.copy(),
                    regs: regs.clone(),
                    groups: groups.clone(),
                    index,
                    opts: opts.clone(),
                    stream: stream_tx.clone(),
                    reply,
                })?;
                drop(stream_tx);
                if !pool.drain(&stream_rx, |(step, t)| on_token(step, &t)) {
                    return Err(FlexError::Interrupted);
                }
                pool.collect(replies, "generation")
            }
        };
        root(each, rank)
    }

    /// A forward on `input_ids` and a backward pass of `loss`: forward hooks
    /// run, backward hooks see (and may edit) the gradient at their points,
    /// and parameter gradients are returned (the model is unchanged). The
    /// merged result (global rank 0's).
    pub fn backward(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        loss: &Loss,
    ) -> Result<BackwardOutput, FlexError> {
        let rank = self.global_rank();
        let each = self.run_backward(&input.to_batch()?, groups, loss)?;
        root(each.into_iter().map(|r| r.map(|(_, m)| m)).collect(), rank)
    }

    /// A backward pass with every rank's own view (this process's ranks, in
    /// global rank order): its loss, its backward hooks' gradients and the
    /// gradients of its parameters (its tensor-parallel slices).
    pub fn backward_each(
        &mut self,
        input: &(impl Input + ?Sized),
        groups: &Groups,
        loss: &Loss,
    ) -> Result<Vec<Result<RankBackward, FlexError>>, FlexError> {
        let each = self.run_backward(&input.to_batch()?, groups, loss)?;
        Ok(each.into_iter().map(|r| r.map(|(mine, _)| mine)).collect())
    }

    #[allow(clippy::type_complexity)]
    fn run_backward(
        &mut self,
        batch: &Batch,
        groups: &Groups,
        loss: &Loss,
    ) -> Result<Vec<Result<(RankBackward, Option<BackwardOutput>), FlexError>>, FlexError> {
        let index = self.forward_index;
        self.forward_index += 1;
        match &mut self.ranks {
            Ranks::Here { engine, .. } => Ok(vec![engine.backward(
                batch,
                &self.registry.regs,
                groups,
                index,
                loss,
            )]),
            Ranks::Threads(pool) => {
                let regs = Arc::new(self.registry.regs.clone());
                pool.run("the backward pass", |reply| Job::Backward {
                    batch: batch.copy(),
                    regs: regs.clone(),
                    groups: groups.clone(),
                    index,
                    loss: loss.deep_copy(),
                    reply,
                })
            }
        }
    }
}
