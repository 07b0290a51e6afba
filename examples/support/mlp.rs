//! The small candle MLP the examples train on the bundled digits (64 → 128 → 64 → 10, ReLU),
//! its training loop, and the scores of its softmax.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW};
use laplace_update::metrics::{Scores, score};
use laplace_update::random::SplitMix64;

pub const PIXELS: usize = 64;
pub const HIDDEN: usize = 128;
pub const FEATURES: usize = 64;
pub const CLASSES: usize = 10;

pub type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The MLP; `layers[2]` is the head.
pub struct Network {
    pub vars: Vec<Var>,
    pub layers: [Linear; 3],
}

impl Network {
    /// He-uniform weights and zero biases from a seeded generator (candle's CPU generator
    /// cannot be seeded).
    pub fn new(seed: u64) -> AnyResult<Self> {
        let mut rng = SplitMix64::new(seed);
        let mut vars = Vec::new();
        let mut layer = |fan_in: usize, fan_out: usize| -> AnyResult<Linear> {
            let bound = (6.0 / fan_in as f64).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), &Device::Cpu)?)?;
            let b = Var::from_tensor(&Tensor::zeros(fan_out, DType::F32, &Device::Cpu)?)?;
            let linear = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            vars.extend([w, b]);
            Ok(linear)
        };
        let layers = [
            layer(PIXELS, HIDDEN)?,
            layer(HIDDEN, FEATURES)?,
            layer(FEATURES, CLASSES)?,
        ];
        Ok(Network { vars, layers })
    }

    /// A copy with its own parameters.
    pub fn duplicate(&self) -> AnyResult<Self> {
        let vars: Vec<Var> = self
            .vars
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<candle_core::Result<_>>()?;
        let linear = |i: usize| {
            Linear::new(
                vars[2 * i].as_tensor().clone(),
                Some(vars[2 * i + 1].as_tensor().clone()),
            )
        };
        let layers = [linear(0), linear(1), linear(2)];
        Ok(Network { vars, layers })
    }

    /// Penultimate activations, n × FEATURES.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.layers[0].forward(x)?.relu()?;
        self.layers[1].forward(&h)?.relu()
    }

    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.layers[2].forward(&self.features(x)?)
    }

    /// The head's weight (K × D, row-major) and bias.
    pub fn head(&self) -> AnyResult<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.vars[4].as_tensor().flatten_all()?.to_vec1()?,
            self.vars[5].as_tensor().to_vec1()?,
        ))
    }
}

/// `epochs` full-batch AdamW steps over `vars` on the MAP objective of a Gaussian prior of
/// precision `tau` on them: `(1/n) Σ_n −log p(y_n | x_n) + (tau / 2n) Σ_v ‖v‖²`.
pub fn train(
    vars: Vec<Var>,
    lr: f64,
    epochs: usize,
    tau: f64,
    logits: impl Fn() -> candle_core::Result<Tensor>,
    y: &Tensor,
) -> AnyResult<()> {
    let n = y.dims1()? as f64;
    let params = ParamsAdamW {
        lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.clone(), params)?;
    for _ in 0..epochs {
        let mut loss = candle_nn::loss::cross_entropy(&logits()?, y)?;
        for v in &vars {
            loss = (loss + (v.as_tensor().sqr()?.sum_all()? * (tau / (2.0 * n)))?)?;
        }
        opt.backward_step(&loss)?;
    }
    Ok(())
}

/// The digits at `idx`: their pixels (len × PIXELS, on the CPU) and labels.
pub fn digit_rows(pixels: &[f32], labels: &[u32], idx: &[usize]) -> AnyResult<(Tensor, Vec<u32>)> {
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| pixels[i * PIXELS..(i + 1) * PIXELS].iter().copied())
        .collect();
    Ok((
        Tensor::from_vec(x, (idx.len(), PIXELS), &candle_core::Device::Cpu)?,
        idx.iter().map(|&i| labels[i]).collect(),
    ))
}

/// Accuracy, NLL and ECE (15 bins) of `softmax(logits)`.
pub fn softmax_scores(logits: &Tensor, y: &[u32]) -> AnyResult<Scores> {
    let probs: Vec<f32> = candle_nn::ops::softmax(logits, D::Minus1)?.flatten_all()?.to_vec1()?;
    Ok(score(&probs, y, CLASSES, 15)?)
}
