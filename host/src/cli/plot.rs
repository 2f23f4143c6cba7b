//! The demo's picture: the logit lens as a line chart (plotters, SVG).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plotters::prelude::*;

use super::lens::Layer;

/// A path the plot can be written to: `.svg`.
pub fn check(path: &Path) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!(
            "--plot writes SVG: give a FILE.svg (got {})",
            path.display()
        );
    }
    Ok(())
}

/// P(target) and P(top token) per layer, the layer from which the target
/// stays on top marked; written to `path` (`.svg`).
pub fn lens(path: &Path, layers: &[Layer], target: &str, prompt: &str) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!(
            "--plot writes SVG: give a FILE.svg (got {})",
            path.display()
        );
    }
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("plot: {e}");
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let n = layers.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("logit lens: {prompt:?}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("layer (residual stream after the block)")
        .y_desc("probability at the last token")
        .draw()
        .map_err(e)?;
    let target_pts: Vec<(f64, f64)> = layers
        .iter()
        .map(|l| (l.layer as f64, l.p_target))
        .collect();
    let top_pts: Vec<(f64, f64)> = layers.iter().map(|l| (l.layer as f64, l.top.1)).collect();
    chart
        .draw_series(LineSeries::new(target_pts.clone(), RED.stroke_width(2)))
        .map_err(e)?
        .label(format!("p({target:?})"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(target_pts.iter().map(|&p| Circle::new(p, 3, RED.filled())))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(top_pts, BLUE.mix(0.6)))
        .map_err(e)?
        .label("p(top token)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if let Some(f) = super::lens::first_top(layers) {
        chart
            .draw_series(LineSeries::new(
                vec![(f as f64, 0.0), (f as f64, 1.0)],
                BLACK.mix(0.4),
            ))
            .map_err(e)?
            .label(format!("{target:?} on top from layer {f}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
