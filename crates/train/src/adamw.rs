//! AdamW whose moments can be saved and restored, so a resumed run continues exactly.
//! Weight decay applies to matrices only, not to norms and biases.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// Parameters in name order, so every process steps them identically.
pub struct AdamW {
    slots: BTreeMap<String, Slot>,
    pub step: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: &BTreeMap<String, Var>, cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                Ok((
                    name.clone(),
                    Slot {
                        var: var.clone(),
                        m: var.zeros_like()?,
                        v: var.zeros_like()?,
                        decay: var.rank() >= 2,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            step: 0,
            cfg,
        })
    }

    /// Global L2 norm of the gradients (of the parameters that have one).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for slot in self.slots.values() {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update at learning rate `lr`; gradients are scaled by `grad_scale` first
    /// (for clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        for slot in self.slots.values_mut() {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = (g * grad_scale)?;
            slot.m = ((&slot.m * b1)? + (&g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&slot.m / bias1)?;
            let v_hat = (&slot.v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let mut theta = slot.var.as_tensor().clone();
            if slot.decay && self.cfg.weight_decay > 0.0 {
                theta = (theta * (1.0 - lr * self.cfg.weight_decay))?;
            }
            slot.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments by name (`m.<param>`, `v.<param>`), for checkpoints.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, slot) in &self.slots {
            out.insert(format!("m.{name}"), slot.m.clone());
            out.insert(format!("v.{name}"), slot.v.clone());
        }
        out
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (name, slot) in self.slots.iter_mut() {
            for (key, dst) in [
                (format!("m.{name}"), &mut slot.m),
                (format!("v.{name}"), &mut slot.v),
            ] {
                let t = tensors.get(&key).ok_or_else(|| TrainError::Checkpoint {
                    path: "optimizer.safetensors".into(),
                    message: format!("missing `{key}`"),
                })?;
                if t.dims() != dst.dims() {
                    return Err(TrainError::Checkpoint {
                        path: "optimizer.safetensors".into(),
                        message: format!(
                            "`{key}` has shape {:?}, expected {:?}",
                            t.dims(),
                            dst.dims()
                        ),
                    });
                }
                *dst = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}
