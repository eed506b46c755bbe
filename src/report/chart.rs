//! One SVG line chart with wall-clock time on the x axis: tick labels `HH:MM:SS` (UTC, the date
//! in the axis label), a linear or logarithmic y axis out to nice ticks with exact decimal
//! labels, grid, shaded bands (fault periods, restarts) under a path per series that breaks
//! where the data has a gap, a `circle.point` per data point (up to [`MARKERS_MAX`] per chart),
//! legend (up to [`LEGEND_MAX`] series, then the band kinds); and the text helpers it needs
//! (digit groups, escaping, colours, times). It is given [`LineChart`]s and knows nothing of
//! snapshots or of the page around it.

use std::fmt::Write as _;

/// Most data-point markers a chart draws; beyond it only the lines (a test counts markers on
/// the smaller charts, where every snapshot has one).
pub const MARKERS_MAX: usize = 2000;
/// Most legend entries a chart lists for its series; with more series the rest are summed up
/// in one line.
pub const LEGEND_MAX: usize = 16;
/// Narrowest a band is drawn (an instant such as a restart), in pixels.
const BAND_MIN_PX: f64 = 2.0;

/// One point of a series: `x` in Unix seconds, `y` in data units.
pub(super) struct Point {
    pub(super) x: f64,
    pub(super) y: f64,
    /// Drawn as `circle.point.bad` (e.g. a snapshot that does not conserve money).
    pub(super) bad: bool,
    /// Tooltip text.
    pub(super) title: String,
}

/// One line of a chart: a `path.series.<class>` plus a `circle.point` per point.
pub(super) struct Series {
    /// Legend and tooltip text.
    pub(super) name: String,
    /// Extra CSS class of the path (`branch`, `total`, `reference`, …).
    pub(super) class: &'static str,
    pub(super) color: String,
    /// Dashed (a reference level): never broken at gaps, no markers.
    pub(super) dashed: bool,
    pub(super) points: Vec<Point>,
}

/// A shaded stretch of time behind the lines (`rect.band.<class>`): a fault period, or an
/// instant (`x0 == x1`, drawn [`BAND_MIN_PX`] wide) such as a restart.
#[derive(Clone, Debug)]
pub(super) struct Band {
    /// Unix seconds.
    pub(super) x0: f64,
    pub(super) x1: f64,
    /// Extra CSS classes (`fault kill`, `fault partition`, `restart`, …).
    pub(super) class: &'static str,
    pub(super) color: &'static str,
    /// Legend text of this kind of band.
    pub(super) legend: &'static str,
    /// Tooltip text.
    pub(super) title: String,
}

/// A line chart with wall-clock time on the x axis.
pub(super) struct LineChart {
    /// The `<svg>` element's id.
    pub(super) id: &'static str,
    pub(super) title: &'static str,
    pub(super) y_label: &'static str,
    /// Start the y axis at 0 (magnitudes) rather than at the smallest value (levels).
    pub(super) y_from_zero: bool,
    /// A logarithmic y axis (decades; values must be positive, smaller ones sit on the floor).
    pub(super) y_log: bool,
    /// First and last instant, Unix seconds: every chart of a page spans the same range.
    pub(super) x_span: (f64, f64),
    /// Lines break between consecutive points further apart than this (seconds): a stretch
    /// without data is drawn as a gap, not bridged.
    pub(super) gap_s: Option<f64>,
    pub(super) bands: Vec<Band>,
    pub(super) series: Vec<Series>,
}

/// One legend entry: a line (dashed or not) or a shaded box.
struct LegendItem<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    boxed: bool,
}

const WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 280.0;
const TOP: f64 = 40.0;
const RIGHT: f64 = 24.0;
const BOTTOM: f64 = 48.0;
/// Space between the x axis label and the legend.
const LEGEND_GAP: f64 = 10.0;
const LEGEND_COLUMNS: usize = 4;
const LEGEND_ROW: f64 = 18.0;

impl LineChart {
    /// How many data points the chart has.
    fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// The x axis (wall-clock ticks) and the y axis (out to nice ticks, or decades).
    fn axes(&self) -> (Axis, Axis) {
        let x = Axis::time(self.x_span.0, self.x_span.1, 8);
        let mut ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.y))
            .collect();
        if self.y_log {
            return (x, Axis::log(&ys));
        }
        if self.y_from_zero {
            ys.push(0.0);
        }
        (x, Axis::new(&ys, false, true, 5))
    }

    /// Room left of the plot for the y tick labels and the y axis label.
    pub(super) fn left_margin(&self) -> f64 {
        let (_, y) = self.axes();
        let chars = y.ticks.iter().map(|(_, l)| l.chars().count()).max();
        34.0 + 7.0 * chars.unwrap_or(1) as f64
    }

    /// The legend: the series (none for a lone series, at most [`LEGEND_MAX`]), then each kind
    /// of band drawn; and how many series it leaves out.
    fn legend(&self, bands: &[&Band]) -> (Vec<LegendItem<'_>>, usize) {
        let shown = if self.series.len() > LEGEND_MAX {
            LEGEND_MAX - 1
        } else {
            self.series.len()
        };
        let mut items: Vec<LegendItem> = if self.series.len() > 1 {
            self.series
                .iter()
                .take(shown)
                .map(|s| LegendItem {
                    name: &s.name,
                    color: &s.color,
                    dashed: s.dashed,
                    boxed: false,
                })
                .collect()
        } else {
            Vec::new()
        };
        let more = self.series.len() - shown;
        let mut kinds: Vec<&'static str> = Vec::new();
        for b in bands {
            if !kinds.contains(&b.legend) {
                kinds.push(b.legend);
                items.push(LegendItem {
                    name: b.legend,
                    color: b.color,
                    dashed: false,
                    boxed: true,
                });
            }
        }
        (items, more)
    }

    /// The chart as one `<svg>` element whose plot starts `left` pixels from the left edge.
    pub(super) fn svg(&self, left: f64) -> String {
        let n_points = self.points();
        let (x_axis, y_axis) = self.axes();
        let (x0, x1) = (left, WIDTH - RIGHT);
        let (y0, y1) = (TOP + PLOT_HEIGHT, TOP);
        let px = |x: f64| x_axis.scale(x, x0, x1);
        let py = |y: f64| y_axis.scale(y, y0, y1);
        // Bands that overlap the x range, clipped to the plot.
        let bands: Vec<&Band> = self
            .bands
            .iter()
            .filter(|b| b.x1 >= x_axis.lo && b.x0 <= x_axis.hi)
            .collect();
        let (legend, more) = self.legend(&bands);
        let legend_rows = legend.len().div_ceil(LEGEND_COLUMNS) + usize::from(more > 0);
        let legend_height = if legend_rows > 0 {
            LEGEND_GAP + legend_rows as f64 * LEGEND_ROW
        } else {
            0.0
        };
        let height = TOP + PLOT_HEIGHT + BOTTOM + legend_height;

        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
             height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
            self.id,
            esc(self.title)
        );
        let _ = writeln!(
            s,
            "<text class=\"title\" x=\"{x0}\" y=\"22\">{}</text>",
            esc(self.title)
        );
        let _ = writeln!(
            s,
            "<rect class=\"frame\" x=\"{x0}\" y=\"{y1}\" width=\"{:.1}\" height=\"{PLOT_HEIGHT}\"/>",
            x1 - x0
        );
        for b in &bands {
            let (l, r) = (px(b.x0).max(x0), px(b.x1).min(x1));
            let (l, w) = if r - l < BAND_MIN_PX {
                let mid = ((l + r) / 2.0).clamp(x0 + BAND_MIN_PX / 2.0, x1 - BAND_MIN_PX / 2.0);
                (mid - BAND_MIN_PX / 2.0, BAND_MIN_PX)
            } else {
                (l, r - l)
            };
            let _ = writeln!(
                s,
                "<rect class=\"band {}\" x=\"{l:.1}\" y=\"{y1}\" width=\"{w:.1}\" \
                 height=\"{PLOT_HEIGHT}\" fill=\"{}\"><title>{}</title></rect>",
                b.class,
                b.color,
                esc(&b.title)
            );
        }
        for (v, label) in &y_axis.ticks {
            let y = py(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
                 <text class=\"tick y\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 6.0,
                y + 4.0,
                esc(label)
            );
        }
        for (v, label) in &x_axis.ticks {
            let x = px(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y1}\" y2=\"{y0}\"/>\
                 <text class=\"tick x\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + 16.0,
                esc(label)
            );
        }
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2.0,
            y0 + 36.0,
            esc(&time_axis_label(x_axis.lo, x_axis.hi))
        );
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
             text-anchor=\"middle\">{}</text>",
            (y0 + y1) / 2.0,
            esc(self.y_label)
        );
        if n_points == 0 {
            let _ = writeln!(
                s,
                "<text class=\"no-data\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no data</text>",
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0
            );
        }
        let markers = n_points <= MARKERS_MAX;
        for (i, series) in self.series.iter().enumerate() {
            let mut d = String::new();
            let mut prev: Option<f64> = None;
            for p in &series.points {
                let broken = match (prev, self.gap_s) {
                    (Some(q), Some(gap)) => !series.dashed && p.x - q > gap,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if broken { "M" } else { "L" },
                    px(p.x),
                    py(p.y)
                );
                prev = Some(p.x);
            }
            let _ = writeln!(
                s,
                "<path class=\"series {}\" data-series=\"{i}\" stroke=\"{}\"{} d=\"{}\">\
                 <title>{}</title></path>",
                series.class,
                series.color,
                if series.dashed {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                },
                d.trim_end(),
                esc(&series.name)
            );
            if markers && !series.dashed {
                for p in &series.points {
                    let _ = writeln!(
                        s,
                        "<circle class=\"point{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\">\
                         <title>{}</title></circle>",
                        if p.bad { " bad" } else { "" },
                        px(p.x),
                        py(p.y),
                        series.color,
                        esc(&p.title)
                    );
                }
            }
        }
        let col_width = (x1 - x0) / LEGEND_COLUMNS as f64;
        let row_y = |row: usize| y0 + BOTTOM + LEGEND_GAP + row as f64 * LEGEND_ROW;
        for (i, item) in legend.iter().enumerate() {
            let x = x0 + (i % LEGEND_COLUMNS) as f64 * col_width;
            let y = row_y(i / LEGEND_COLUMNS);
            let mark = if item.boxed {
                format!(
                    "<rect class=\"swatch\" x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"10\" \
                     fill=\"{}\"/>",
                    y - 9.0,
                    item.color
                )
            } else {
                format!(
                    "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                     stroke-width=\"3\"{}/>",
                    x + 18.0,
                    y - 4.0,
                    y - 4.0,
                    item.color,
                    if item.dashed {
                        " stroke-dasharray=\"4 3\""
                    } else {
                        ""
                    }
                )
            };
            let _ = writeln!(
                s,
                "<g class=\"legend\">{mark}<text x=\"{:.1}\" y=\"{y:.1}\">{}</text></g>",
                x + 24.0,
                esc(item.name)
            );
        }
        if more > 0 {
            let _ = writeln!(
                s,
                "<text class=\"legend more\" x=\"{x0}\" y=\"{:.1}\">… and {more} more (hover a line \
                 for its name)</text>",
                row_y(legend.len().div_ceil(LEGEND_COLUMNS))
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// An axis: its drawn range and its ticks (position, exact decimal label).
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    /// Logarithmic: `lo..hi` are whole decades, positions go by log10.
    log: bool,
    ticks: Vec<(f64, String)>,
}

/// Tick steps of a time axis, seconds: each divides the next larger unit evenly, so ticks fall
/// on round clock times (multiples since the Unix epoch are UTC clock times).
const TIME_STEPS_S: [f64; 28] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0,
    604800.0,
];

impl Axis {
    /// A wall-clock axis over `lo..hi` (Unix seconds, exactly that range; a single instant gets
    /// a second either side) with about `target` ticks at round clock times, labelled
    /// `HH:MM:SS` (UTC; with as many decimals of a second as the step needs).
    fn time(lo: f64, hi: f64, target: usize) -> Axis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        if hi - lo < 1e-3 {
            (lo, hi) = (lo - 1.0, hi + 1.0);
        }
        let rough = (hi - lo) / target.max(1) as f64;
        let step = TIME_STEPS_S
            .iter()
            .copied()
            .find(|&s| s >= rough)
            .unwrap_or_else(|| (rough / 604800.0).ceil() * 604800.0);
        let decimals = if step < 0.01 {
            3
        } else if step < 0.1 {
            2
        } else if step < 1.0 {
            1
        } else {
            0
        };
        let (k_lo, k_hi) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
        let ticks = (k_lo as i64..=k_hi as i64)
            .take(4 * target + 4)
            .map(|k| {
                let t = k as f64 * step;
                (t, clock_time(t, decimals))
            })
            .collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// A logarithmic axis over the positive `values`, out to whole decades, ticks at 1, 2 and
    /// 5 × 10^e (only 10^e beyond four decades) with exact decimal labels. No positive value:
    /// the decade 1..10.
    fn log(values: &[f64]) -> Axis {
        let positive = values.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
        let (min, max) = positive.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (e_lo, mut e_hi) = if min <= max {
            (min.log10().floor() as i32, max.log10().ceil() as i32)
        } else {
            (0, 1)
        };
        if e_hi <= e_lo {
            e_hi = e_lo + 1;
        }
        let mantissas: &[i128] = if e_hi - e_lo <= 4 { &[1, 2, 5] } else { &[1] };
        let mut ticks = Vec::new();
        for e in e_lo..=e_hi {
            for &m in mantissas {
                if e == e_hi && m > 1 {
                    break;
                }
                ticks.push((m as f64 * 10f64.powi(e), decimal(m, e)));
            }
        }
        Axis {
            lo: 10f64.powi(e_lo),
            hi: 10f64.powi(e_hi),
            log: true,
            ticks,
        }
    }

    /// An axis over `values` with about `target` ticks at 1, 2 or 5 × 10^e. `integer`: ticks
    /// at whole numbers only. `extend`: widen the range out to the ticks around it (else the
    /// range is exactly the values' and the ticks fall inside). A single value gets room around.
    fn new(values: &[f64], integer: bool, extend: bool, target: usize) -> Axis {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (mut min, mut max) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if min > max {
            (min, max) = (0.0, 1.0);
        }
        if max - min <= max.abs().max(min.abs()) * 1e-12 {
            let pad = if integer || max == 0.0 {
                1.0
            } else {
                max.abs() / 1000.0
            };
            let nonnegative = min >= 0.0;
            (min, max) = (min - pad, max + pad);
            if nonnegative && min < 0.0 {
                min = 0.0;
            }
        }
        let rough = (max - min) / target.max(1) as f64;
        let mut exp = rough.log10().floor() as i32;
        let f = rough / 10f64.powi(exp);
        let mut mantissa: i128 = if f <= 1.0 {
            1
        } else if f <= 2.0 {
            2
        } else if f <= 5.0 {
            5
        } else {
            exp += 1;
            1
        };
        if integer && exp < 0 {
            (mantissa, exp) = (1, 0);
        }
        let step = mantissa as f64 * 10f64.powi(exp);
        let (k_lo, k_hi) = if extend {
            ((min / step).floor(), (max / step).ceil())
        } else {
            ((min / step - 1e-9).ceil(), (max / step + 1e-9).floor())
        };
        let (lo, hi) = if extend {
            (k_lo * step, k_hi * step)
        } else {
            (min, max)
        };
        let ticks = (k_lo as i128..=k_hi as i128)
            .take(4 * target + 4)
            .map(|k| (k as f64 * step, decimal(k * mantissa, exp)))
            .collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// Maps `v` from the axis range onto `from..to` (pixels); on a log axis a value below the
    /// floor (0 included) sits on the floor.
    fn scale(&self, v: f64, from: f64, to: f64) -> f64 {
        if self.log {
            let (lo, hi) = (self.lo.log10(), self.hi.log10());
            let v = v.max(self.lo).log10();
            return from + (v - lo) / (hi - lo) * (to - from);
        }
        if self.hi > self.lo {
            from + (v - self.lo) / (self.hi - self.lo) * (to - from)
        } else {
            (from + to) / 2.0
        }
    }
}

/// Unix seconds `t` as the UTC clock time `HH:MM:SS` with `decimals` (0..=3) decimals of a
/// second, from whole milliseconds (exact, whatever the float's rounding).
pub(super) fn clock_time(t: f64, decimals: usize) -> String {
    let ms = (t * 1000.0).round().max(0.0) as u64;
    let day_s = (ms / 1000) % 86_400;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        day_s / 3600,
        day_s / 60 % 60,
        day_s % 60
    );
    if decimals > 0 {
        let frac = format!("{:03}", ms % 1000);
        out.push('.');
        out.push_str(&frac[..decimals.min(3)]);
    }
    out
}

/// The UTC date (`YYYY-MM-DD`) of Unix seconds `t`.
pub(super) fn date(t: f64) -> String {
    let secs = t.max(0.0) as u64;
    let text = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
    )
    .to_string();
    text.get(..10).unwrap_or(&text).to_string()
}

/// The x axis label: "time (UTC) on 2024-05-01", or with both dates when the range spans days.
fn time_axis_label(lo: f64, hi: f64) -> String {
    let (a, b) = (date(lo), date(hi));
    if a == b {
        format!("time (UTC) on {a}")
    } else {
        format!("time (UTC) from {a} to {b}")
    }
}

/// `n × 10^exp` as an exact decimal with digit groups ("4,000,000", "0.25", "-1.5").
fn decimal(n: i128, exp: i32) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let digits = n.unsigned_abs().to_string();
    if exp >= 0 {
        let zeros = if n == 0 { 0 } else { exp as usize };
        return format!("{sign}{}", group_digits(&(digits + &"0".repeat(zeros))));
    }
    let places = exp.unsigned_abs() as usize;
    let padded = format!("{digits:0>width$}", width = places + 1);
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{sign}{}.{frac}", group_digits(int))
}

/// Groups the digits of a decimal integer string in threes ("4000000" → "4,000,000"); anything
/// after the leading digits is kept as it is.
pub(super) fn group_digits(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (int, tail) = rest.split_at(end);
    let mut out = String::with_capacity(s.len() + int.len() / 3);
    out.push_str(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out.push_str(tail);
    out
}

/// Escapes text for HTML and SVG content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A distinct colour for series `i` of `n`: the ten Tableau colours, then golden-angle hues.
pub(super) fn color(i: usize, n: usize) -> String {
    const TABLEAU: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    if n <= TABLEAU.len() {
        TABLEAU[i % TABLEAU.len()].to_string()
    } else {
        let hue = (i as f64 * 137.508) % 360.0;
        let light = 35 + (i % 3) * 10;
        format!("hsl({hue:.0},65%,{light}%)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14T22:13:20Z.
    const T0: f64 = 1_700_000_000.0;

    #[test]
    fn time_axis_ticks_are_clock_times_at_round_steps() {
        // 40 s: ticks every 5 s, on the clock's round seconds, inside the range.
        let a = Axis::time(T0 + 0.3, T0 + 40.3, 8);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "22:13:25", "22:13:30", "22:13:35", "22:13:40", "22:13:45", "22:13:50", "22:13:55",
                "22:14:00"
            ]
        );
        assert!(a.ticks.iter().all(|(t, _)| (a.lo..=a.hi).contains(t)));
        // Half a second: tenths.
        let a = Axis::time(T0, T0 + 0.5, 8);
        assert_eq!(a.ticks[1].1, "22:13:20.1");
        // Three hours: every 30 minutes.
        let a = Axis::time(T0, T0 + 3.0 * 3600.0, 8);
        assert_eq!(a.ticks[0].1, "22:30:00");
        assert_eq!(a.ticks[1].1, "23:00:00");
        assert_eq!(a.ticks[2].1, "23:30:00");
        assert_eq!(a.ticks[3].1, "00:00:00", "past midnight");
        assert_eq!(
            time_axis_label(a.lo, a.hi),
            "time (UTC) from 2023-11-14 to 2023-11-15"
        );
        assert_eq!(time_axis_label(T0, T0 + 5.0), "time (UTC) on 2023-11-14");
        // One instant still gets an axis with ticks.
        let a = Axis::time(T0, T0, 8);
        assert!(a.hi > a.lo && !a.ticks.is_empty());
        assert_eq!(clock_time(T0 + 0.25, 3), "22:13:20.250");
    }

    #[test]
    fn log_axis_spans_decades_and_positions_by_log10() {
        let a = Axis::log(&[0.4, 3.0, 250.0]);
        assert!(a.log);
        assert_eq!((a.lo, a.hi), (0.1, 1000.0));
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100", "200", "500", "1,000"]
        );
        // Each of the four decades takes the same height.
        let y = |v| a.scale(v, 0.0, 400.0);
        assert!((y(1.0) - 100.0).abs() < 1e-9 && (y(10.0) - 200.0).abs() < 1e-9);
        // p50 4 ms under a 250 ms max sits well off the floor (on a linear 0..250 axis it
        // would be 1.6% of the way up).
        assert!(y(4.0) > 150.0);
        assert_eq!(y(0.0), 0.0, "zero sits on the floor");
        // Wide ranges: decades only.
        let wide = Axis::log(&[0.01, 100_000.0]);
        assert_eq!(wide.ticks.len(), 8);
        assert_eq!(
            Axis::log(&[]).ticks.first().map(|t| t.1.as_str()),
            Some("1")
        );
    }

    #[test]
    fn tick_labels_are_exact_decimals() {
        assert_eq!(decimal(4_000, 3), "4,000,000");
        assert_eq!(decimal(0, 5), "0");
        assert_eq!(decimal(25, -2), "0.25");
        assert_eq!(decimal(-15, -1), "-1.5");
        assert_eq!(decimal(5, -3), "0.005");
        assert_eq!(group_digits("1234567.5"), "1,234,567.5");
        assert_eq!(group_digits("-1000"), "-1,000");
        assert_eq!(group_digits("999"), "999");

        let a = Axis::new(&[3_999_000.0, 4_001_000.0], false, true, 5);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "3,999,000",
                "3,999,500",
                "4,000,000",
                "4,000,500",
                "4,001,000"
            ]
        );
        // A flat line gets room around it and stays exact.
        let flat = Axis::new(&[4_000_000.0; 3], false, true, 5);
        assert!(flat.lo < 4_000_000.0 && flat.hi > 4_000_000.0);
        assert!(flat.ticks.iter().any(|(_, l)| l == "4,000,000"));
        // Fractional milliseconds, and a u128-sized total.
        let small = Axis::new(&[0.0, 0.3], false, true, 5);
        let labels: Vec<&str> = small.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.1", "0.2", "0.3"]);
        let big = Axis::new(&[0.0, 6.4e20], false, true, 5);
        assert!(big
            .ticks
            .iter()
            .any(|(_, l)| l == "200,000,000,000,000,000,000"));
        // Whole numbers only, within the values' range.
        let ids = Axis::new(&[7.0, 9.0], true, false, 8);
        let labels: Vec<&str> = ids.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["7", "8", "9"]);
        let one = Axis::new(&[1.0], true, false, 8);
        assert_eq!(one.ticks.len(), 3);
        assert_eq!(
            Axis::new(&[], false, true, 5)
                .ticks
                .first()
                .map(|t| t.1.as_str()),
            Some("0.0")
        );
    }
}
