//! The global state every island holds (parameters, outer momentum, round), its canonical
//! bytes and hash, and the outer step: the token-weighted average of the round's accepted
//! deltas, in island order, followed by Nesterov momentum.
//!
//! Reproducibility: deltas are summed in f64 in increasing island id, with weights
//! `tokens_i / total` (exactly 1 for a single island), and the result is rounded to f32 once
//! per element, so every island that aggregates the same set of contributions gets the same
//! bits whatever order they arrived in.
//!
//! A round with no accepted contribution still advances: the average is zero, so the
//! parameters move by momentum alone (`θ -= lr·μ²·m`, `m = μ·m`). That keeps every island's
//! round counter and state in step without a special case, and decays the momentum.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use candle_core::{DType, Device, Tensor};

use crate::codec::Delta;
use crate::error::{DilocoError, Result};

/// Outer optimizer settings (DiLoCo's defaults: Nesterov, lr 0.7, momentum 0.9).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OuterConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// The number of contributions `lr` is tuned for. When set, a round that accepts `k` of
    /// them (`0 < k < n`) steps at `lr·sqrt(k/n)`: averaging `k` AdamW deltas cancels less
    /// of their noise than averaging `n`, so the average is larger and wants a smaller step
    /// (measured in docs/BENCHMARKS.md, "DiLoCo"). Every island sees the same accepted set,
    /// so they all scale alike. Absent from the JSON when unset, so older run ids stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_islands: Option<u64>,
}

impl Default for OuterConfig {
    fn default() -> Self {
        Self {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
            lr_islands: None,
        }
    }
}

impl OuterConfig {
    /// The learning rate of a round that accepted `contributions`.
    pub fn lr_for(&self, contributions: usize) -> f64 {
        match self.lr_islands {
            Some(n) if contributions > 0 && (contributions as u64) < n => {
                self.lr * (contributions as f64 / n as f64).sqrt()
            }
            _ => self.lr,
        }
    }
}

/// blake3 of the canonical state bytes: also the content address of the state blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct StateHash(pub [u8; 32]);

impl fmt::Display for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHash({})", &hex::encode(self.0)[..16])
    }
}

/// One parameter: shape, f32 values and outer momentum (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub momentum: Vec<f32>,
}

/// The global model every island agrees on after each round.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalState {
    /// Rounds completed.
    pub round: u64,
    pub tensors: BTreeMap<String, ParamTensor>,
}

const STATE_MAGIC: [u8; 4] = *b"AGGS";
const STATE_VERSION: u16 = 1;

#[derive(BorshSerialize, BorshDeserialize)]
struct WireState {
    magic: [u8; 4],
    version: u16,
    round: u64,
    tensors: Vec<WireParam>,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct WireParam {
    name: String,
    shape: Vec<u64>,
    values: Vec<u8>,
    momentum: Vec<u8>,
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_f32_le(name: &str, b: &[u8], n: usize) -> Result<Vec<f32>> {
    if Some(b.len()) != n.checked_mul(4) {
        return Err(DilocoError::malformed(
            "state",
            format!("`{name}`: {} bytes for {n} values", b.len()),
        ));
    }
    let v: Vec<f32> = b
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(DilocoError::malformed(
            "state",
            format!("`{name}`: non-finite value"),
        ));
    }
    Ok(v)
}

impl GlobalState {
    /// Round 0 from a model's weights, with zero momentum.
    pub fn from_weights(weights: &HashMap<String, Tensor>) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (name, t) in weights {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|x| !x.is_finite()) {
                return Err(DilocoError::NonFinite(name.clone()));
            }
            tensors.insert(
                name.clone(),
                ParamTensor {
                    shape: t.dims().to_vec(),
                    momentum: vec![0.0; values.len()],
                    values,
                },
            );
        }
        Ok(Self { round: 0, tensors })
    }

    /// The parameters as tensors, to load into a model or export.
    pub fn to_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|(k, p)| {
                Ok((
                    k.clone(),
                    Tensor::from_slice(&p.values, p.shape.as_slice(), device)?,
                ))
            })
            .collect()
    }

    /// Number of parameters.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|p| p.values.len()).sum()
    }

    /// The canonical bytes (the state blob): borsh of magic, version, round and, in name
    /// order, each tensor's name, shape, f32 LE values and f32 LE momentum.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let wire = WireState {
            magic: STATE_MAGIC,
            version: STATE_VERSION,
            round: self.round,
            tensors: self
                .tensors
                .iter()
                .map(|(name, p)| WireParam {
                    name: name.clone(),
                    shape: p.shape.iter().map(|&d| d as u64).collect(),
                    values: f32_le(&p.values),
                    momentum: f32_le(&p.momentum),
                })
                .collect(),
        };
        borsh::to_vec(&wire).map_err(|e| DilocoError::malformed("state", e.to_string()))
    }

    /// Parse a state blob, checking everything [`Self::to_bytes`] guarantees.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |r: String| DilocoError::malformed("state", r);
        let wire: WireState = borsh::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if wire.magic != STATE_MAGIC || wire.version != STATE_VERSION {
            return Err(bad(format!(
                "magic {:?} version {}",
                wire.magic, wire.version
            )));
        }
        let mut tensors = BTreeMap::new();
        for p in wire.tensors {
            if tensors
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= p.name)
            {
                return Err(bad(format!("tensor `{}` out of order or repeated", p.name)));
            }
            let shape = p
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| bad(format!("`{}`: dimension {d}", p.name)))
                })
                .collect::<Result<Vec<usize>>>()?;
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("`{}`: shape {shape:?} overflows", p.name)))?;
            let values = from_f32_le(&p.name, &p.values, n)?;
            let momentum = from_f32_le(&p.name, &p.momentum, n)?;
            tensors.insert(
                p.name,
                ParamTensor {
                    shape,
                    values,
                    momentum,
                },
            );
        }
        Ok(Self {
            round: wire.round,
            tensors,
        })
    }

    /// The canonical hash: blake3 of [`Self::to_bytes`].
    pub fn hash(&self) -> Result<StateHash> {
        Ok(StateHash(*blake3::hash(&self.to_bytes()?).as_bytes()))
    }

    /// Parse a blob fetched by its content address and check it is what was asked for.
    pub fn from_blob(expected: StateHash, bytes: &[u8]) -> Result<Self> {
        let actual = StateHash(*blake3::hash(bytes).as_bytes());
        if actual != expected {
            return Err(DilocoError::HashMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Self::from_bytes(bytes)
    }

    /// Check that `delta` has exactly this state's tensors and lengths.
    pub fn check_delta(&self, delta: &Delta) -> Result<()> {
        if delta.len() != self.tensors.len() {
            return Err(DilocoError::Shape {
                name: "*".into(),
                reason: format!(
                    "delta has {} tensors, the model {}",
                    delta.len(),
                    self.tensors.len()
                ),
            });
        }
        for (name, p) in &self.tensors {
            match delta.get(name) {
                Some(d) if d.len() == p.values.len() => {}
                Some(d) => {
                    return Err(DilocoError::Shape {
                        name: name.clone(),
                        reason: format!("{} values, expected {}", d.len(), p.values.len()),
                    })
                }
                None => {
                    return Err(DilocoError::Shape {
                        name: name.clone(),
                        reason: "missing from the delta".into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The parameters `θ − delta` (rounded to f32 once), e.g. an island's model after its
    /// decoded delta, as a verifier sees it.
    pub fn minus(&self, delta: &Delta) -> Result<BTreeMap<String, Vec<f32>>> {
        self.check_delta(delta)?;
        let mut out = BTreeMap::new();
        for (name, p) in &self.tensors {
            let d = &delta[name];
            out.insert(
                name.clone(),
                p.values
                    .iter()
                    .zip(d)
                    .map(|(&t, &d)| (t as f64 - d) as f32)
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// One accepted contribution to a round's average.
#[derive(Clone, Copy, Debug)]
pub struct Weighted<'a> {
    pub island: u64,
    pub tokens: u64,
    pub delta: &'a Delta,
}

/// A round's averaged pseudo-gradient and how many contributions went into it.
#[derive(Clone, Debug, PartialEq)]
pub struct Average {
    pub delta: Delta,
    pub contributions: usize,
}

/// Token-weighted average of `inputs` summed in increasing island id (f64); `None` when
/// there is nothing to average (no input or zero tokens).
pub fn average(state: &GlobalState, inputs: &[Weighted<'_>]) -> Result<Option<Average>> {
    let mut sorted: Vec<&Weighted<'_>> = inputs.iter().filter(|w| w.tokens > 0).collect();
    sorted.sort_by_key(|w| w.island);
    if let Some(pair) = sorted.windows(2).find(|p| p[0].island == p[1].island) {
        return Err(DilocoError::Protocol(format!(
            "island {} contributes twice",
            pair[0].island
        )));
    }
    if sorted.is_empty() {
        return Ok(None);
    }
    let contributions = sorted.len();
    let total: u128 = sorted.iter().map(|w| w.tokens as u128).sum();
    let mut avg: Delta = state
        .tensors
        .iter()
        .map(|(k, p)| (k.clone(), vec![0f64; p.values.len()]))
        .collect();
    for w in sorted {
        state.check_delta(w.delta)?;
        let weight = w.tokens as f64 / total as f64;
        for (name, acc) in avg.iter_mut() {
            for (a, d) in acc.iter_mut().zip(&w.delta[name]) {
                *a += weight * d;
            }
        }
    }
    Ok(Some(Average {
        delta: avg,
        contributions,
    }))
}

/// The outer step: `m = μ·m + Δ`, `θ -= lr·(Δ + μ·m)` (Nesterov) or `θ -= lr·m`, with `lr`
/// from [`OuterConfig::lr_for`]; advances the round. `avg` is `None` for a round without
/// contributions (momentum only, at the full `lr`).
pub fn outer_step(state: &mut GlobalState, avg: Option<&Average>, cfg: &OuterConfig) -> Result<()> {
    if let Some(avg) = avg {
        state.check_delta(&avg.delta)?;
    }
    let lr = cfg.lr_for(avg.map_or(0, |a| a.contributions));
    let mu = cfg.momentum;
    let mut next = state.tensors.clone();
    for (name, p) in next.iter_mut() {
        let g = avg.map(|a| a.delta[name].as_slice());
        for i in 0..p.values.len() {
            let g = g.map_or(0.0, |g| g[i]);
            let m = mu * p.momentum[i] as f64 + g;
            let update = if cfg.nesterov { g + mu * m } else { m };
            let theta = (p.values[i] as f64 - lr * update) as f32;
            let m = m as f32;
            if !(theta.is_finite() && m.is_finite()) {
                return Err(DilocoError::NonFinite(format!(
                    "{name}[{i}] after the outer step"
                )));
            }
            p.values[i] = theta;
            p.momentum[i] = m;
        }
    }
    state.tensors = next;
    state.round += 1;
    Ok(())
}

/// [`average`] then [`outer_step`]: the whole aggregation of a round.
pub fn aggregate(
    state: &mut GlobalState,
    inputs: &[Weighted<'_>],
    cfg: &OuterConfig,
) -> Result<()> {
    let avg = average(state, inputs)?;
    outer_step(state, avg.as_ref(), cfg)
}
