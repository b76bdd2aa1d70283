//! `tutti-bench plot`: the percentile distribution of one or more interval logs, the way
//! HdrHistogram's plotter draws it: x is the percentile on a 1/(1-p) log axis (50%, 90%,
//! 99%, 99.9%, ... equally spaced), y the latency on a log axis; one line per histogram
//! tag (intervals with the same tag in one file are added up), with a legend.

use std::path::{Path, PathBuf};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::new_histogram;

/// Where a TrueType font is looked for when `--font` is not given (Debian's
/// fonts-dejavu-core, then other distributions' places).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// The deepest percentile drawn is the one the histogram's count resolves, capped here:
/// 1/(1-p) = 10^7 is p = 99.99999%.
const MAX_NINES: f64 = 7.0;
/// Points per decade of 1/(1-p).
const POINTS_PER_DECADE: u32 = 20;
const WIDTH: u32 = 1024;
const HEIGHT: u32 = 640;

/// One line of the plot.
pub struct Series {
    pub name: String,
    pub histogram: Histogram<u64>,
}

/// Reads every interval of `path`, adding up intervals with the same tag (untagged ones
/// under "(no tag)"), in the order tags first appear.
pub fn read_hlog(path: &Path) -> Result<Vec<Series>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<Series> = Vec::new();
    let mut deserializer = Deserializer::new();
    for (i, entry) in IntervalLogIterator::new(&text).enumerate() {
        let entry = entry.map_err(|e| format!("{}: entry {}: {e:?}", path.display(), i + 1))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| format!("{}: interval {}: bad base64: {e}", path.display(), i + 1))?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{}: interval {}: {e:?}", path.display(), i + 1))?;
        let name = interval.tag().map_or("(no tag)", |t| t.as_str()).to_string();
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => s
                .histogram
                .add(&h)
                .map_err(|e| format!("{}: tag {name}: {e:?}", path.display()))?,
            None => {
                let mut histogram = new_histogram();
                histogram
                    .add(&h)
                    .map_err(|e| format!("{}: tag {name}: {e:?}", path.display()))?;
                out.push(Series { name, histogram });
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no histogram intervals in this log", path.display()));
    }
    Ok(out)
}

/// The points of one line: (1/(1-p), latency in µs), from p = 0 up to the deepest
/// percentile the histogram's count resolves.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let nines = (h.len() as f64).log10().clamp(0.0, MAX_NINES);
    let steps = (nines * POINTS_PER_DECADE as f64).ceil() as u32;
    (0..=steps)
        .map(|k| {
            let x = 10f64.powf((k as f64 / POINTS_PER_DECADE as f64).min(nines));
            let q = 1.0 - 1.0 / x;
            (x, (h.value_at_quantile(q).max(1) as f64) / 1000.0)
        })
        .collect()
}

/// "99.9%" for the x axis value 1/(1-p) = 1000.
fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let nines = x.log10().round() as usize;
    format!("{p:.prec$}%", prec = nines.saturating_sub(2))
}

fn latency_label(us: &f64) -> String {
    if *us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn load_font(font: Option<&Path>) -> Result<(), String> {
    let path: PathBuf = match font {
        Some(p) => p.to_path_buf(),
        None => FONT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no TrueType font found (looked in {}); pass one with --font FILE.ttf \
                     (Debian: apt-get install fonts-dejavu-core)",
                    FONT_PATHS.join(", ")
                )
            })?,
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("font {}: {e}", path.display()))?;
    // Registered once per process for plotters' "sans-serif"; the bytes live as long.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("font {}: not a TrueType/OpenType font", path.display()))
}

/// Draws `series` into `out` (PNG or SVG by its extension).
pub fn plot(out: &Path, title: &str, series: &[Series], font: Option<&Path>) -> Result<(), String> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    load_font(font)?;
    match ext.as_deref() {
        Some("png") => {
            let backend = BitMapBackend::new(out, (WIDTH, HEIGHT));
            draw(backend.into_drawing_area(), title, series)
        }
        Some("svg") => {
            let backend = SVGBackend::new(out, (WIDTH, HEIGHT));
            draw(backend.into_drawing_area(), title, series)
        }
        _ => Err(format!("{}: the output must end in .png or .svg", out.display())),
    }
    .map_err(|e| format!("drawing {}: {e}", out.display()))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.name.as_str(), percentile_points(&s.histogram)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if lines.is_empty() {
        return Err("every histogram is empty".into());
    }
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|v| v.0))
        .fold(10.0f64, f64::max);
    let (y_min, y_max) = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|v| v.1))
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y_range = (y_min / 1.5).max(0.001)..(y_max * 1.5).max(0.002);
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((1.0f64..x_max).log_scale(), y_range.log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&latency_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_the_percentiles_on_a_log_axis() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = percentile_points(&h);
        assert_eq!(p.first().unwrap().0, 1.0);
        // 10,000 samples resolve four nines: 1/(1-p) up to 10^4.
        assert!((p.last().unwrap().0 - 10_000.0).abs() < 1e-6);
        // x = 2 is the median: 5,000 µs.
        let median = p
            .iter()
            .find(|(x, _)| (x - 10f64.powf(0.3)).abs() < 1e-9)
            .unwrap();
        assert!((median.1 - 10_000.0 * 0.499).abs() < 60.0, "{median:?}");
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn labels_read_as_percentiles_and_times() {
        assert_eq!(percentile_label(&10.0), "90%");
        assert_eq!(percentile_label(&100.0), "99%");
        assert_eq!(percentile_label(&1000.0), "99.9%");
        assert_eq!(percentile_label(&100_000.0), "99.999%");
        assert_eq!(latency_label(&20.0), "20 µs");
        assert_eq!(latency_label(&2000.0), "2 ms");
    }
}
