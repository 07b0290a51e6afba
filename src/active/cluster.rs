//! Geometry for the diversity strategies: k-means++ seeding, Lloyd's k-means and greedy
//! k-center, on rows of a host matrix in f64.

use crate::random::SplitMix64;

/// Row-major points in f64 with their squared norms.
pub struct Points {
    /// Number of points.
    pub n: usize,
    /// Dimension.
    pub d: usize,
    /// Coordinates, n × d.
    pub x: Vec<f64>,
    /// `‖x_i‖²`.
    pub norms: Vec<f64>,
}

impl Points {
    /// Points from row-major coordinates.
    pub fn new(x: Vec<f64>, n: usize, d: usize) -> Self {
        let norms = x
            .chunks(d.max(1))
            .take(n)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        Points { n, d, x, norms }
    }
    /// Row i.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }
    /// `‖x_i − y‖²` for a point y with squared norm `y_norm`, clipped at 0.
    pub fn dist2_to(&self, i: usize, y: &[f64], y_norm: f64) -> f64 {
        let dot: f64 = self.row(i).iter().zip(y).map(|(a, b)| a * b).sum();
        (self.norms[i] + y_norm - 2.0 * dot).max(0.0)
    }
    /// `‖x_i − x_j‖²`.
    pub fn dist2(&self, i: usize, j: usize) -> f64 {
        self.dist2_to(i, self.row(j), self.norms[j])
    }
}

/// k-means++ seeding (Arthur and Vassilvitskii 2007): the first center is `first` (or drawn
/// uniformly), each next one is drawn with probability proportional to `D(x)²`, the squared
/// distance `dist2(x, c)` to the nearest center chosen so far. Returns k distinct indices
/// (fewer when fewer than k points have positive distance).
pub fn kmeans_pp_seeds(
    n: usize,
    k: usize,
    first: Option<usize>,
    dist2: impl Fn(usize, usize) -> f64,
    rng: &mut SplitMix64,
) -> Vec<usize> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let first = first.unwrap_or_else(|| (rng.next_u64() % n as u64) as usize);
    let mut centers = vec![first];
    let mut nearest: Vec<f64> = (0..n).map(|i| dist2(i, first)).collect();
    nearest[first] = 0.0;
    while centers.len() < k.min(n) {
        let total: f64 = nearest.iter().sum();
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            break;
        }
        let mut u = rng.uniform() * total;
        let mut pick = n;
        for (i, &w) in nearest.iter().enumerate() {
            if w > 0.0 {
                pick = i;
                if u < w {
                    break;
                }
                u -= w;
            }
        }
        centers.push(pick);
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(dist2(i, pick));
        }
        nearest[pick] = 0.0;
    }
    centers
}

/// Lloyd's k-means from k-means++ seeds: the assignment of every point to one of k clusters
/// after at most `iterations` rounds (stops early when no assignment changes).
pub fn kmeans(points: &Points, k: usize, iterations: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let (n, d) = (points.n, points.d);
    let seeds = kmeans_pp_seeds(n, k, None, |i, j| points.dist2(i, j), rng);
    let k = seeds.len();
    let mut centers: Vec<f64> = seeds.iter().flat_map(|&s| points.row(s).iter().copied()).collect();
    let mut assignment = vec![usize::MAX; n];
    for _ in 0..iterations.max(1) {
        // Squared distances by one product: ‖x‖² + ‖c‖² − 2 X Cᵀ.
        let c_norms: Vec<f64> = centers
            .chunks(d.max(1))
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        let x = faer::MatRef::from_row_major_slice(&points.x, n, d);
        let c = faer::MatRef::from_row_major_slice(&centers, k, d);
        let dots = x * c.transpose();
        let mut changed = false;
        for i in 0..n {
            let best = (0..k)
                .map(|j| (j, points.norms[i] + c_norms[j] - 2.0 * dots[(i, j)]))
                .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
                .0;
            if assignment[i] != best {
                assignment[i] = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0usize; k];
        for (i, &j) in assignment.iter().enumerate() {
            counts[j] += 1;
            sums[j * d..(j + 1) * d]
                .iter_mut()
                .zip(points.row(i))
                .for_each(|(s, v)| *s += v);
        }
        for j in 0..k {
            if counts[j] > 0 {
                for t in 0..d {
                    centers[j * d + t] = sums[j * d + t] / counts[j] as f64;
                }
            }
        }
    }
    assignment
}

/// Greedy k-center (Gonzalez 1985; the CoreSet strategy of Sener and Savarese 2018): picks
/// `count` candidates, each the one farthest from the labelled points and the picks so far.
/// `covered` are the squared distances of the candidates to their nearest labelled point
/// (`f64::INFINITY` when nothing is labelled; the first pick is then candidate 0).
pub fn k_center(candidates: &Points, mut covered: Vec<f64>, count: usize) -> Vec<usize> {
    let mut picks = Vec::with_capacity(count);
    for _ in 0..count.min(candidates.n) {
        let (best, _) =
            covered.iter().enumerate().fold(
                (usize::MAX, f64::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            );
        if best == usize::MAX {
            break;
        }
        picks.push(best);
        let (row, norm) = (candidates.row(best).to_vec(), candidates.norms[best]);
        for (i, c) in covered.iter_mut().enumerate() {
            *c = c.min(candidates.dist2_to(i, &row, norm));
        }
        covered[best] = f64::NEG_INFINITY;
    }
    picks
}
