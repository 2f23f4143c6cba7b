//! `probe`: a trainable linear probe (multinomial logistic regression) on one
//! token position of the activation, trained by SGD from inside the hook over
//! many forward passes. Its parameters live in the plugin's state, so they
//! persist across forwards (and survive the instance being re-created).
//!
//! Config:
//! `{"classes": 2, "labels": [[0, 1, ...], ...], "train_forwards": 200,
//!   "lr": 0.05, "position": -1}`
//! - `labels[i]` are the labels of the batch rows of the i-th forward this
//!   registration sees (cycled if shorter); forwards `0 .. train_forwards`
//!   train, later ones only predict;
//! - emits `predictions` (`[batch]`, class indices as f32) and, while
//!   training, `loss` (mean cross-entropy before the update).

use flexmodel_hook_sdk::prelude::*;
use flexmodel_hook_sdk::state;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    classes: usize,
    labels: Vec<Vec<u32>>,
    #[serde(default = "default_train")]
    train_forwards: u64,
    #[serde(default = "default_lr")]
    lr: f32,
    #[serde(default = "last")]
    position: i64,
}

fn default_train() -> u64 {
    u64::MAX
}
fn default_lr() -> f32 {
    0.05
}
fn last() -> i64 {
    -1
}

struct Probe(Config);

const PARAMS: &str = "params";
const SEEN: &str = "forwards_seen";

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl HookFunction for Probe {
    fn info() -> Info {
        Info::new(
            "probe",
            "0.1.0",
            "A linear probe trained by SGD on one token position, parameters in plugin state",
        )
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        if c.classes < 2 {
            return Err(Error::config("classes must be at least 2"));
        }
        if c.labels.is_empty() || c.labels.iter().flatten().any(|&l| l as usize >= c.classes) {
            return Err(Error::config(
                "labels must be non-empty and below `classes`",
            ));
        }
        if !(c.lr.is_finite() && c.lr > 0.0) {
            return Err(Error::config("lr must be positive"));
        }
        Ok(Probe(c))
    }

    fn access(&self) -> Access {
        Access::read_only().reads(Slice::token(self.0.position))
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        let c = &self.0;
        if ctx.shape.len() < 3 {
            return Err(Error::InvalidArgument(format!(
                "expected [batch, pos, features], got {:?}",
                ctx.shape
            )));
        }
        let b = ctx.shape[0];
        let d: usize = ctx.shape[2..].iter().product();
        let x = act.read_slice(&Slice::token(c.position))?;
        let k = c.classes;
        let mut params = match state::get(PARAMS) {
            Some(p) => from_bytes(&p),
            None => vec![0.0; k * (d + 1)],
        };
        if params.len() != k * (d + 1) {
            return Err(Error::InvalidArgument(format!(
                "probe was trained on {} features, this activation has {d}",
                params.len() / k - 1
            )));
        }
        let seen: u64 = state::get_json(SEEN)?.unwrap_or(0);
        // Class probabilities of each row: softmax(W x + b).
        let probs: Vec<Vec<f32>> = (0..b)
            .map(|r| {
                let xr = &x[r * d..(r + 1) * d];
                let z: Vec<f32> = (0..k)
                    .map(|j| {
                        let w = &params[j * (d + 1)..j * (d + 1) + d];
                        w.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>() + params[j * (d + 1) + d]
                    })
                    .collect();
                let m = z.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            })
            .collect();
        let preds: Vec<f32> = probs
            .iter()
            .map(|p| {
                p.iter()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (j, &v)| if v > best.1 { (j, v) } else { best },
                    )
                    .0 as f32
            })
            .collect();
        emit("predictions", &[b], &preds)?;
        if seen < c.train_forwards {
            let labels = &c.labels[(seen % c.labels.len() as u64) as usize];
            if labels.len() != b {
                return Err(Error::InvalidArgument(format!(
                    "forward {seen} has {} labels for a batch of {b}",
                    labels.len()
                )));
            }
            let mut loss = 0.0;
            let scale = c.lr / b as f32;
            for (r, p) in probs.iter().enumerate() {
                let y = labels[r] as usize;
                loss -= p[y].max(1e-12).ln();
                let xr = &x[r * d..(r + 1) * d];
                for (j, pj) in p.iter().enumerate() {
                    let g = pj - if j == y { 1.0 } else { 0.0 };
                    let row = &mut params[j * (d + 1)..(j + 1) * (d + 1)];
                    for (w, xv) in row[..d].iter_mut().zip(xr) {
                        *w -= scale * g * xv;
                    }
                    row[d] -= scale * g;
                }
            }
            emit("loss", &[1], &[loss / b as f32])?;
            state::set(PARAMS, &to_bytes(&params))?;
        }
        state::set_json(SEEN, &(seen + 1))
    }
}

export_hook!(Probe);
