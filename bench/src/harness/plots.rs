//! The report's plot: each figure's speed relative to bare metal, per mode, as horizontal
//! bars on a log scale (1 = as fast as bare metal, 0.5 = half as fast), as SVG and PNG.
//! Text is drawn with DejaVu Sans (Debian's fonts-dejavu-core, installed by scripts/setup).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{Figure, Report, Summary};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Speed relative to bare metal: the ratio for a throughput, its inverse for a time.
pub fn speed(figure: &Figure, summary: &Summary) -> f64 {
    if figure.higher_is_better {
        summary.ratio_to_bare
    } else {
        1.0 / summary.ratio_to_bare
    }
}

fn register_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT} (fonts-dejavu-core; scripts/setup installs it): {e}"))?;
            // Leaked once: plotters keeps registered fonts for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT}: not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

const COLOURS: [RGBColor; 4] =
    [RGBColor(0x4c, 0x72, 0xb0), RGBColor(0xdd, 0x84, 0x52), RGBColor(0x55, 0xa8, 0x68), RGBColor(0xc4, 0x4e, 0x52)];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, report: &Report) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let modes: Vec<&String> = report.modes.keys().filter(|m| *m != "bare").collect();
    let group = modes.len() as i32 + 1;
    let rows = report.figures.len() as i32 * group;
    let speeds: Vec<f64> = report
        .figures
        .iter()
        .flat_map(|f| modes.iter().filter_map(move |m| f.modes.get(*m).map(|s| speed(f, s))))
        .filter(|s| s.is_finite() && *s > 0.0)
        .collect();
    let lo = speeds.iter().copied().fold(1.0f64, f64::min) / 1.5;
    let hi = speeds.iter().copied().fold(1.0f64, f64::max) * 1.5;
    let mut title = "Speed relative to bare metal (1 = the same; log scale)".to_string();
    if let Some(label) = &report.machine.label {
        title = format!("{title} — {label}");
    }
    let names: Vec<String> = report.figures.iter().map(|f| format!("{} {}", f.workload, f.metric)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(210)
        .build_cartesian_2d((lo..hi).log_scale(), 0..rows)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows as usize + 1)
        .y_label_formatter(&|y| {
            let row = rows - 1 - *y;
            if row >= 0 && row % group == 0 {
                names.get((row / group) as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("speed relative to bare metal (higher is faster)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (j, mode) in modes.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let bars: Vec<Rectangle<(f64, i32)>> = report
            .figures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let s = speed(f, f.modes.get(*mode)?);
                let y = rows - 1 - (i as i32 * group + j as i32);
                (s.is_finite() && s > 0.0).then(|| Rectangle::new([(lo, y), (s, y + 1)], colour.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(report.modes.get(*mode).map_or_else(|| mode.to_string(), |about| legend_label(about)))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .draw_series(LineSeries::new([(1.0, 0), (1.0, rows)], BLACK.stroke_width(2)))
        .map_err(err)?
        .label("bare metal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A mode's name as the legend gives it: what it is, without the VM sizes after the colon
/// (the report and the table have those).
fn legend_label(about: &str) -> String {
    about.split(':').next().unwrap_or(about).to_string()
}

/// A line per mode: the median of metric `metric` of `workload_prefix`-N against N.
struct Curve<'a> {
    workload_prefix: &'a str,
    metric: &'a str,
    title: &'a str,
    y_desc: &'a str,
}

fn points(report: &Report, curve: &Curve, mode: &str) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = report
        .figures
        .iter()
        .filter(|f| f.workload.starts_with(curve.workload_prefix) && f.metric == curve.metric)
        .filter_map(|f| Some((f.sandboxes? as f64, f.modes.get(mode)?.median)))
        .filter(|(_, y)| y.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

fn draw_curve<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, report: &Report, curve: &Curve) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<(f64, f64)> = report.modes.keys().flat_map(|m| points(report, curve, m)).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0f64, f64::max);
    // Headroom above the highest point for the legend, which sits in the upper left.
    let y_max = all.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.4;
    let mut title = curve.title.to_string();
    if let Some(label) = &report.machine.label {
        title = format!("{title} — {label}");
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max)
        .map_err(err)?;
    let y_decimals = if y_max >= 100.0 { 0 } else { 1 };
    chart
        .configure_mesh()
        .x_desc("sandboxes")
        .y_desc(curve.y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (j, (mode, about)) in report.modes.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let pts = points(report, curve, mode);
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(legend_label(about))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes the plot as `stem.svg` and `stem.png` into `dir`.
fn both(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    draw_on: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{stem}.svg"));
    draw_on(SVGBackend::new(&svg, size).into_drawing_area()).with_context(|| format!("{}", svg.display()))?;
    let png = dir.join(format!("{stem}.png"));
    draw_png(BitMapBackend::new(&png, size).into_drawing_area()).with_context(|| format!("{}", png.display()))?;
    Ok(vec![svg, png])
}

/// Writes `ratios`, and where the report has them `start-parallel` and `footprint`, as SVG
/// and PNG into `dir`; returns their paths.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let height = 110 + 22 * (report.figures.len() as u32 * report.modes.len() as u32);
    let mut written = both(dir, "ratios", (1200, height), |a| draw(a, report), |a| draw(a, report))?;
    let curves = [
        (
            "start-parallel",
            Curve {
                workload_prefix: "start-parallel-",
                metric: "all_ready",
                title: "N sandboxes started at once: time until all are ready",
                y_desc: "ms (median)",
            },
        ),
        (
            "footprint",
            Curve {
                workload_prefix: "footprint-",
                metric: "pss",
                title: "Host memory per idle sandbox (PSS of its host processes)",
                y_desc: "MiB per sandbox",
            },
        ),
    ];
    for (stem, curve) in curves {
        if report.figures.iter().any(|f| f.workload.starts_with(curve.workload_prefix)) {
            written.extend(both(dir, stem, (1000, 560), |a| draw_curve(a, report, &curve), |a| draw_curve(a, report, &curve))?);
        }
    }
    Ok(written)
}
