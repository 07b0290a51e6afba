//! The house style of the program's figures: two panels side by side, each a captioned chart
//! with a mesh and a legend, in the bundled font.

use std::ops::Range;
use std::path::Path;

use laplace_update::{Error, Result};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::digits::FONT;

/// A chart with f64 axes on a bitmap.
pub type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
/// One panel of a figure.
pub type Panel<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

/// An I/O error about the figure at `path`.
pub fn failure(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A white 1400 × 560 figure at `path`, and its two side-by-side panels.
pub fn two_panels(path: &Path) -> Result<(Panel<'_>, Vec<Panel<'_>>)> {
    // Registering twice (a second figure in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failure(path, e))?;
    let panels = root.split_evenly((1, 2));
    Ok((root, panels))
}

/// A captioned chart on `panel` over `x`, its y range `(lo, hi)` padded by `pad` of its span.
pub fn chart<'a, 'b>(
    panel: &'a Panel<'b>,
    path: &Path,
    title: &str,
    x_desc: &str,
    x: Range<f64>,
    (lo, hi): (f64, f64),
    pad: f64,
) -> Result<Chart<'a, 'b>> {
    let margin = ((hi - lo) * pad).max(1e-3);
    let mut chart = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, (lo - margin)..(hi + margin))
        .map_err(|e| failure(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| failure(path, e))?;
    Ok(chart)
}

/// The legend of the labelled series drawn on `chart`.
pub fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, path: &Path) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| failure(path, e))
}
