//! The house style of the program's figures: two panels side by side, each a captioned chart
//! with a mesh, under one key of the series, in the bundled font.

use std::ops::Range;
use std::path::Path;

use laplace_update::{Error, Result};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// The colour of series `i` in every panel and in the key.
pub fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

const KEY_FONT: u32 = 16;
const KEY_ROW: i32 = 26;
const KEY_SWATCH: i32 = 26;

/// A white 1400-pixel-wide figure at `path`: a key naming `series` (series `i` in [`color`]`(i)`)
/// in a strip across the top, where no line can pass under it, and two side-by-side panels below.
pub fn two_panels<'b>(path: &'b Path, series: &[&str]) -> Result<(Panel<'b>, Vec<Panel<'b>>)> {
    // Registering twice (a second figure in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let width = 1400u32;
    let font = TextStyle::from(("sans-serif", KEY_FONT).into_font());
    // Lay the key out first: entries left to right, wrapping to a new row at the edge.
    let probe = BitMapBackend::new(path, (width, 1)).into_drawing_area();
    let mut places = Vec::with_capacity(series.len());
    let (mut x, mut row) = (20i32, 0i32);
    for name in series {
        let (text, _) = probe.estimate_text_size(name, &font).map_err(|e| failure(path, e))?;
        let item = KEY_SWATCH + 8 + text as i32 + 32;
        if x > 20 && x + item > width as i32 - 20 {
            (x, row) = (20, row + 1);
        }
        places.push((x, row));
        x += item;
    }
    drop(probe);
    let key_height = 16 + KEY_ROW * (row + 1);
    let root = BitMapBackend::new(path, (width, 560 + key_height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failure(path, e))?;
    let (key, body) = root.split_vertically(key_height);
    for (i, (name, (x, row))) in series.iter().zip(places).enumerate() {
        let y = 8 + KEY_ROW * row + KEY_ROW / 2;
        key.draw(&PathElement::new(
            vec![(x, y), (x + KEY_SWATCH, y)],
            color(i).stroke_width(3),
        ))
        .map_err(|e| failure(path, e))?;
        let style = font
            .clone()
            .into_text_style(&key)
            .pos(Pos::new(HPos::Left, VPos::Center));
        key.draw(&Text::new(name.to_string(), (x + KEY_SWATCH + 8, y), style))
            .map_err(|e| failure(path, e))?;
    }
    let panels = body.split_evenly((1, 2));
    Ok((root, panels))
}

/// A captioned chart on `panel` over `x` (labelled at whole numbers only), its y range
/// `(lo, hi)` padded by `pad` of its span.
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
    let whole = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_labels(11)
        .x_label_formatter(&whole)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| failure(path, e))?;
    Ok(chart)
}
