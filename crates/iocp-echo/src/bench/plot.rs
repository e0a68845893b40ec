//! `--plot FILE.svg`: the latency of a run (or of merged runs) by
//! percentile, and its throughput over time, drawn with `plotters` into an
//! SVG file.
//!
//! Top: the percentile curve the way HdrHistogram draws it. The x axis is
//! `log10(1 / (1 - q))`, so 90 %, 99 %, 99.9 %, 99.99 % … are evenly spaced
//! and the tail gets as much room as the body; the y axis (latency) is
//! logarithmic too. Bottom: messages echoed per second, per 100 ms slice
//! (coarser for long runs), since the start of the load; merged runs are
//! lined up on the wall clock and their sum is drawn too.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::report::{Run, Series};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 900;
/// At most this many points per throughput line.
const MAX_POINTS: usize = 400;
/// The deepest percentile axis: 99.9999 %.
const MAX_NINES: f64 = 6.0;
/// The throughput axis goes this far above the highest rate (room for the
/// legend above the lines).
const TOP: f64 = 1.5;

/// The label of a percentile-axis position: `x` nines.
fn percentile_label(x: f64) -> String {
    let n = x.round();
    if (x - n).abs() > 1e-6 || n < 0.0 {
        return String::new();
    }
    match n as u32 {
        0 => "0%".into(),
        1 => "90%".into(),
        k => format!("99.{}%", "9".repeat(k as usize - 2)).replace(".%", "%"),
    }
}

/// A latency in microseconds, for an axis.
fn latency_label(us: f64) -> String {
    if us < 1000.0 {
        format!("{} µs", trim(us))
    } else if us < 1e6 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} s", trim(us / 1e6))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// How many nines of the percentile axis the histogram `h` fills.
fn nines(h: &Histogram<u64>) -> f64 {
    (h.len().max(1) as f64).log10().min(MAX_NINES)
}

/// The percentile curve of `h`: (nines, latency µs), up to `x_end`.
fn curve(h: &Histogram<u64>, x_end: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    if h.is_empty() {
        return pts;
    }
    pts.push((0.0, h.min().max(1) as f64));
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 {
            x_end
        } else {
            (-(1.0 - q).log10()).min(x_end)
        };
        let y = (h.highest_equivalent(v.value_iterated_to())).max(1) as f64;
        pts.push((x, y));
    }
    pts
}

/// A series as (seconds since `origin`, messages/s), at most
/// [`MAX_POINTS`] points.
fn rate_points(s: &Series, origin: f64) -> Vec<(f64, f64)> {
    let group = s.messages.len().div_ceil(MAX_POINTS).max(1);
    let width = s.slice_s * group as f64;
    let offset = s.start_unix_s - origin;
    s.messages
        .chunks(group)
        .enumerate()
        .map(|(k, c)| {
            let t = offset + (k as f64 + 0.5) * width;
            (t, c.iter().sum::<u64>() as f64 / width)
        })
        .collect()
}

/// Several series added up on the wall clock (slices of the first one's
/// length).
fn sum_series(all: &[&Series], origin: f64) -> Series {
    let slice = all.first().map_or(0.1, |s| s.slice_s);
    let mut messages: Vec<u64> = Vec::new();
    for s in all {
        for (k, &m) in s.messages.iter().enumerate() {
            let t = s.start_unix_s - origin + k as f64 * s.slice_s;
            let j = (t / slice).round().max(0.0) as usize;
            if messages.len() <= j {
                messages.resize(j + 1, 0);
            }
            messages[j] += m;
        }
    }
    Series {
        start_unix_s: origin,
        slice_s: slice,
        messages,
        reconnects: Vec::new(),
    }
}

/// A throughput line: its legend, colour, width and points.
type Line = (String, RGBColor, u32, Vec<(f64, f64)>);

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

fn legend(run: &Run) -> String {
    let h = &run.hist;
    if h.is_empty() {
        return format!("{}: no messages", run.label);
    }
    format!(
        "{}: {} messages, p50 {}, p99 {}, max {}",
        run.label,
        h.len(),
        latency_label(h.value_at_quantile(0.5) as f64),
        latency_label(h.value_at_quantile(0.99) as f64),
        latency_label(h.max() as f64)
    )
}

fn title(runs: &[Run], merged: Option<&Run>) -> String {
    let r = merged.or(runs.first()).and_then(|r| r.report.as_ref());
    let what = match r {
        Some(r) => {
            let load = match (r.mode.as_str(), r.depth, r.rate) {
                ("closed", Some(d), _) => format!("closed loop, depth {d}"),
                ("open", _, Some(rate)) => format!("open loop, {rate} msgs/s"),
                (m, _, _) => m.to_string(),
            };
            format!(
                "{}: {load}, {} connections, {} s",
                r.target, r.connections, r.duration_s
            )
        }
        None => String::new(),
    };
    if merged.is_some() {
        format!("iocp-echo bench merge ({} runs) {what}", runs.len())
    } else {
        format!("iocp-echo bench {what}")
    }
}

/// Draws `runs` (and `merged`, the sum of several) into `path`.
/// A chart on `area` under `caption`, with room for the axis labels.
fn chart_on<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", 16))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(80);
    b
}

/// The legend of a chart's labelled series, in a framed box at `at`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
}

pub fn write_svg(path: &Path, runs: &[Run], merged: Option<&Run>) -> Result<(), String> {
    draw(path, runs, merged).map_err(|e| e.to_string())
}

fn draw(path: &Path, runs: &[Run], merged: Option<&Run>) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&title(runs, merged), ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2 + 20);

    // --- latency by percentile
    let curves: Vec<&Run> = runs.iter().chain(merged).collect();
    let x_end = curves
        .iter()
        .map(|r| nines(&r.hist))
        .fold(0.0, f64::max)
        .max(1.0);
    let x_max = x_end.ceil().max(2.0);
    let lo = curves
        .iter()
        .filter(|r| !r.hist.is_empty())
        .map(|r| r.hist.min().max(1))
        .min()
        .unwrap_or(1) as f64;
    let hi = curves
        .iter()
        .map(|r| r.hist.max())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let mut chart = chart_on(&top, "latency by percentile")
        .build_cartesian_2d(0f64..x_max, (lo / 1.5..hi * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| latency_label(*y))
        .x_desc("percentile (each step ten times rarer)")
        .y_desc("latency")
        .draw()?;
    for (i, r) in curves.iter().enumerate() {
        let is_merged = merged.is_some() && i == curves.len() - 1;
        let c = if is_merged { BLACK } else { color(i) };
        let style = c.stroke_width(if is_merged { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(curve(&r.hist, x_end), style))?
            .label(legend(r))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

    // --- throughput over time
    let with_series: Vec<(usize, &Run, &Series)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.series.as_ref().map(|s| (i, r, s)))
        .collect();
    let origin = with_series
        .iter()
        .map(|(_, _, s)| s.start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let mut lines: Vec<Line> = with_series
        .iter()
        .map(|(i, r, s)| (r.label.clone(), color(*i), 2, rate_points(s, origin)))
        .collect();
    if with_series.len() > 1 {
        let all: Vec<&Series> = with_series.iter().map(|(_, _, s)| *s).collect();
        let total = sum_series(&all, origin);
        lines.push(("sum".into(), BLACK, 3, rate_points(&total, origin)));
    }
    let t_max = lines
        .iter()
        .flat_map(|l| l.3.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let r_max = lines
        .iter()
        .flat_map(|l| l.3.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = chart_on(&bottom, "throughput over time")
        .build_cartesian_2d(0f64..t_max * 1.02, 0f64..r_max * TOP)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of the load")
        .y_desc("messages/s")
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{}M", trim(*y / 1e6))
            } else if *y >= 1e3 {
                format!("{}k", trim(*y / 1e3))
            } else {
                trim(*y)
            }
        })
        .draw()?;
    for (label, c, w, pts) in lines {
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(w)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    // Reconnects: a red tick at the bottom of every slice that had any.
    let red = RGBColor(200, 30, 30);
    let tick = r_max * 0.06;
    let mut marks = Vec::new();
    for (_, _, s) in &with_series {
        let offset = s.start_unix_s - origin;
        for (k, &n) in s.reconnects.iter().enumerate() {
            if n > 0 {
                let t = offset + (k as f64 + 0.5) * s.slice_s;
                marks.push(PathElement::new(
                    vec![(t, 0.0), (t, tick)],
                    red.stroke_width(3),
                ));
            }
        }
    }
    if !marks.is_empty() {
        chart
            .draw_series(marks)?
            .label("connections cut and reopened")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(3)));
    }
    // One run: where its warm-up ended (merged runs each have their own).
    if let Some(w) = runs
        .first()
        .filter(|_| merged.is_none())
        .and_then(|r| r.report.as_ref())
        .map(|r| r.warmup_s)
        .filter(|&w| w > 0.0)
    {
        let grey = RGBColor(110, 110, 110);
        let style = grey.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(w, 0.0), (w, r_max * TOP)],
                6,
                4,
                style,
            ))?
            .label("end of warm-up")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{new_hist, Report};

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert_eq!(percentile_label(2.5), "");
        assert_eq!(latency_label(250.0), "250 µs");
        assert_eq!(latency_label(1500.0), "1.5 ms");
        assert_eq!(latency_label(2e6), "2 s");
    }

    /// The text elements of an SVG: (x, y, text).
    fn texts(doc: &roxmltree::Document) -> Vec<(f64, f64, String)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                let num = |a| {
                    n.attribute(a)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN)
                };
                (
                    num("x"),
                    num("y"),
                    n.text().unwrap_or("").trim().to_string(),
                )
            })
            .collect()
    }

    fn polylines(doc: &roxmltree::Document) -> Vec<Vec<(f64, f64)>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                n.attribute("points")
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').expect("x,y");
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// A uniform 1..=10000 µs histogram drawn: the percentile axis is
    /// logarithmic (90 %, 99 %, 99.9 %, 99.99 % evenly spaced) and the curve
    /// passes through the value of each percentile on the log latency axis.
    #[test]
    fn percentile_axis_and_curve() {
        let mut h = new_hist();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let run = Run {
            label: "uniform".into(),
            report: Some(Report {
                target: "t".into(),
                mode: "closed".into(),
                depth: Some(1),
                ..Report::default()
            }),
            hist: h,
            series: Some(Series {
                start_unix_s: 1e9,
                slice_s: 0.1,
                messages: vec![100; 50],
                reconnects: Vec::new(),
            }),
        };
        let path = std::env::temp_dir().join(format!("iocp-echo-plot-{}.svg", std::process::id()));
        write_svg(&path, std::slice::from_ref(&run), None).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
        let t = texts(&doc);
        let at = |label: &str| -> (f64, f64) {
            let v: Vec<_> = t.iter().filter(|x| x.2 == label).collect();
            assert_eq!(v.len(), 1, "{label:?} {v:?}");
            (v[0].0, v[0].1)
        };
        let xs: Vec<f64> = ["0%", "90%", "99%", "99.9%", "99.99%"]
            .iter()
            .map(|l| at(l).0)
            .collect();
        for w in xs.windows(3) {
            let (a, b) = (w[1] - w[0], w[2] - w[1]);
            assert!(
                a > 50.0 && (a - b).abs() < 2.0,
                "uneven percentile axis: {xs:?}"
            );
        }
        // The y axis: two latency labels a decade apart give the scale.
        let (_, y1) = at("1 ms");
        let (_, y10) = at("10 ms");
        let y_of = |us: f64| y1 + (y10 - y1) * (us / 1000.0).log10();
        let lines = polylines(&doc);
        let curve = lines
            .iter()
            .find(|l| l.len() > 20)
            .expect("a latency curve");
        assert!(
            curve
                .windows(2)
                .all(|w| w[1].0 >= w[0].0 - 0.5 && w[1].1 <= w[0].1 + 0.5),
            "the curve must rise to the right"
        );
        // Text anchors sit a few pixels off the tick itself: compare with a
        // margin, and check the curve at 90 %, 99 % and 99.9 %.
        let (ytick_off, xtick_off) = (5.0, 0.0);
        for (k, want_us) in [(1, 9000.0), (2, 9900.0), (3, 9990.0)] {
            let x = xs[k] + xtick_off;
            let p = curve
                .iter()
                .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
                .unwrap();
            assert!((p.0 - x).abs() < 15.0, "no curve point near {x}: {curve:?}");
            let want = y_of(want_us);
            assert!(
                (p.1 - want).abs() < ytick_off + 8.0,
                "at {} the curve is at y={} but {want_us} µs is at y={want}",
                percentile_label(k as f64),
                p.1
            );
        }
        // The throughput series: 50 slices of 100 messages = 1000 msgs/s.
        let rate = lines
            .iter()
            .find(|l| l.len() == 50)
            .expect("a throughput line");
        let y0 = rate[0].1;
        assert!(rate.iter().all(|p| (p.1 - y0).abs() < 0.5), "a flat line");
        assert!(
            t.iter().any(|x| x.2.starts_with("uniform: 10000 messages")),
            "legend"
        );
    }
}
