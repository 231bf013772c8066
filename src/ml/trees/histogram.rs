//! Per-node gradient histograms and the best split they show.

use rayon::prelude::*;

use super::binning::BINS;
use super::grow::{Candidate, GrowParams, TrainingData, Workspace};
use super::tree::SplitRule;
use crate::ml::table::ColumnKind;

/// Categories sorted by a ratio smoothed by this much hessian, so that a
/// category seen a few times does not lead the order on noise alone.
pub(super) const CATEGORY_SMOOTHING: f64 = 10.0;

/// Gradient and hessian sums of a bin, in f32 so that one 8-byte store
/// updates a bin (the split search adds and compares in f64). Row counts are
/// not kept per bin; like LightGBM, a child's count is estimated from its
/// hessian share, exactly so for a forest (h = 1).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HistBin {
    pub(super) g: f32,
    pub(super) h: f32,
}

/// Bins between the starts of two features' histograms. Measured: at
/// exactly 2 or 4 KiB, loads and stores of one row's updates to different
/// features alias (4K aliasing) and histogram building ran four times slower.
pub(super) const STRIDE: usize = BINS + 8;

/// How many rows ahead histogram building prefetches.
pub(super) const PREFETCH_ROWS: usize = 16;

#[inline(always)]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault, and the
    // address comes from a live reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(value as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A row's gradient and hessian, in f32: half the bytes a histogram pass
/// reads per row (sums over nodes are taken in f64).
pub(super) type GradPair = [f32; 2];

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sums {
    pub(super) g: f64,
    pub(super) h: f64,
}

impl TrainingData<'_> {
    pub(super) fn build_hist(
        &self,
        rows: &[u32],
        gradients: &[GradPair],
        allowed: &[usize],
        work: &mut Workspace,
    ) -> Vec<HistBin> {
        let features = self.features();
        let build = |chunk: &[u32], hist: &mut Vec<HistBin>| {
            for (i, &r) in chunk.iter().enumerate() {
                // Below the root a node's rows are scattered over the table:
                // ask for a later row's bins and gradients while this one adds.
                if let Some(&ahead) = chunk.get(i + PREFETCH_ROWS) {
                    prefetch(&self.row_major[ahead as usize * features]);
                    prefetch(&gradients[ahead as usize]);
                }
                let r = r as usize;
                let [g, h] = gradients[r];
                let bins = &self.row_major[r * features..(r + 1) * features];
                for &f in allowed {
                    let cell = &mut hist[f * STRIDE + bins[f] as usize];
                    cell.g += g;
                    cell.h += h;
                }
            }
        };
        let threads = rayon::current_num_threads();
        if rows.len() < 16_384 || threads < 2 {
            let mut hist = work.hist(features);
            build(rows, &mut hist);
            return hist;
        }
        let chunk = rows.len().div_ceil(threads);
        let mut partial: Vec<Vec<HistBin>> = (0..rows.len().div_ceil(chunk))
            .map(|_| work.hist(features))
            .collect();
        rows.par_chunks(chunk)
            .zip(partial.par_iter_mut())
            .for_each(|(rows, hist)| build(rows, hist));
        let mut partial = partial.into_iter();
        let mut hist = partial.next().expect("at least one chunk");
        for other in partial {
            for (x, y) in hist.iter_mut().zip(&other) {
                x.g += y.g;
                x.h += y.h;
            }
            work.free_hists.push(other);
        }
        hist
    }

    pub(super) fn best_split(
        &self,
        hist: &[HistBin],
        candidates: &[usize],
        params: &GrowParams,
        count: u32,
    ) -> Option<Candidate> {
        // Every searched feature's histogram sums to the node's totals.
        let first = *candidates.first()?;
        let total =
            hist[first * STRIDE..first * STRIDE + BINS]
                .iter()
                .fold(Sums::default(), |a, b| Sums {
                    g: a.g + b.g as f64,
                    h: a.h + b.h as f64,
                });
        let rows_per_hessian = count as f64 / total.h.max(f64::MIN_POSITIVE);
        let min_rows = params.min_child_samples as f64;
        let score = |g: f64, h: f64| g * g / (h + params.lambda);
        let parent = score(total.g, total.h);
        let acceptable = |left: &Sums| {
            let left_n = left.h * rows_per_hessian;
            let right_n = count as f64 - left_n;
            let right_h = total.h - left.h;
            left_n + 1e-6 >= min_rows
                && right_n + 1e-6 >= min_rows
                && left.h >= params.min_child_hessian
                && right_h >= params.min_child_hessian
        };
        let gain_of = |left: &Sums| {
            score(left.g, left.h) + score(total.g - left.g, total.h - left.h) - parent
        };
        let mut best: Option<Candidate> = None;
        for &f in candidates {
            let h = &hist[f * STRIDE..f * STRIDE + BINS];
            let mut offer = |gain: f64, rule: SplitRule| {
                if gain > params.min_split_gain && best.as_ref().is_none_or(|b| gain > b.gain) {
                    best = Some(Candidate {
                        gain,
                        feature: f,
                        rule,
                    });
                }
            };
            match self.binner.kinds[f] {
                ColumnKind::Numeric => {
                    let bins = self.binner.bin_count(f);
                    let mut left = Sums::default();
                    for (b, bin) in h.iter().enumerate().take(bins - 1) {
                        left.g += bin.g as f64;
                        left.h += bin.h as f64;
                        if bin.h == 0.0 || !acceptable(&left) {
                            continue;
                        }
                        // Only missing values go left; JSON has no -inf.
                        let value = if b == 0 {
                            f64::MIN
                        } else {
                            self.binner.edges[f][b - 1]
                        };
                        offer(
                            gain_of(&left),
                            SplitRule::Threshold {
                                bin: b as u8,
                                value,
                            },
                        );
                    }
                }
                ColumnKind::Categorical => {
                    let mut present: Vec<usize> = (0..BINS).filter(|&b| h[b].h > 0.0).collect();
                    if present.len() < 2 {
                        continue;
                    }
                    present.sort_by(|&a, &b| {
                        let ratio = |c: &HistBin| c.g as f64 / (c.h as f64 + CATEGORY_SMOOTHING);
                        let (ra, rb) = (ratio(&h[a]), ratio(&h[b]));
                        ra.total_cmp(&rb).then(a.cmp(&b))
                    });
                    let mut left = Sums::default();
                    let mut set = [0u64; 4];
                    for &b in &present[..present.len() - 1] {
                        left.g += h[b].g as f64;
                        left.h += h[b].h as f64;
                        set[b / 64] |= 1 << (b % 64);
                        if acceptable(&left) {
                            offer(gain_of(&left), SplitRule::Categories { bins: set });
                        }
                    }
                }
            }
        }
        best
    }
}
