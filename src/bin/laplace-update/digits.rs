//! The bundled digits data set and the demo's fixed feature map, shared by `demo` and `al`.

use std::io::Read;

use laplace_update::random::SplitMix64;
use laplace_update::{Error, Result};

/// The bundled UCI optical digits test set: 1797 rows of 64 pixels (0..16) and a label.
const DIGITS: &[u8] = include_bytes!("../../../data/digits.csv.gz");
/// The font of the figures.
pub const FONT: &[u8] = include_bytes!("../../../data/fonts/DejaVuSans.ttf");
const PIXELS: usize = 64;
/// Classes of the digits.
pub const CLASSES: usize = 10;
/// Random Fourier features of the backbone.
pub const FEATURES: usize = 512;

/// The digits' pixels (scaled to [0, 1]) and labels.
pub fn load_digits() -> Result<(Vec<f32>, Vec<u32>)> {
    let fail = |reason: String| Error::Format {
        what: "bundled digits".into(),
        reason,
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let values: Vec<f32> = line
            .split(',')
            .map(|t| t.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if values.len() != PIXELS + 1 {
            return Err(fail(format!(
                "a row has {} columns, expected {}",
                values.len(),
                PIXELS + 1
            )));
        }
        x.extend(values[..PIXELS].iter().map(|p| p / 16.0));
        y.push(values[PIXELS] as u32);
    }
    Ok((x, y))
}

/// A fixed, seeded random-Fourier-feature backbone (the SNGP-style feature map):
/// `φ(x) = √(2/D) cos(Ω x + β)`, `Ω_ij ~ N(0, 1/ℓ²)`, `β_i ~ U(0, 2π)`, ℓ = 4.
pub fn random_fourier_features(pixels: &[f32], n: usize, seed: u64) -> Vec<f32> {
    let lengthscale = 4.0;
    let mut rng = SplitMix64::new(seed ^ 0x0BAC_CB0E);
    let omega: Vec<f64> = rng
        .normals(FEATURES * PIXELS)
        .into_iter()
        .map(|w| w / lengthscale)
        .collect();
    let beta: Vec<f64> = (0..FEATURES)
        .map(|_| 2.0 * std::f64::consts::PI * rng.uniform())
        .collect();
    let scale = (2.0 / FEATURES as f64).sqrt();
    let mut out = Vec::with_capacity(n * FEATURES);
    for i in 0..n {
        let x = &pixels[i * PIXELS..(i + 1) * PIXELS];
        for j in 0..FEATURES {
            let w = &omega[j * PIXELS..(j + 1) * PIXELS];
            let z: f64 = w.iter().zip(x).map(|(a, b)| a * f64::from(*b)).sum::<f64>() + beta[j];
            out.push((scale * z.cos()) as f32);
        }
    }
    out
}
