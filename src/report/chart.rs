//! One SVG line chart with the snapshot id on the x axis: axes out to nice ticks with exact
//! decimal labels, grid, a polyline per series, a `circle.point` per data point (up to
//! [`MARKERS_MAX`] per chart), legend (up to [`LEGEND_MAX`] entries); and the text helpers it
//! needs (digit groups, escaping, colours). It is given [`LineChart`]s and knows nothing of
//! snapshots or of the page around it.

use std::fmt::Write as _;

/// Most data-point markers a chart draws; beyond it only the lines (a test counts markers on
/// the smaller charts, where every snapshot has one).
pub const MARKERS_MAX: usize = 2000;
/// Most legend entries a chart lists; with more series the rest are summed up in one line.
pub const LEGEND_MAX: usize = 16;

/// One point of a series, in data units.
pub(super) struct Point {
    pub(super) x: f64,
    pub(super) y: f64,
    /// Drawn as `circle.point.bad` (e.g. a snapshot that does not conserve money).
    pub(super) bad: bool,
    /// Tooltip text.
    pub(super) title: String,
}

/// One line of a chart: a `polyline.series.<class>` plus a `circle.point` per point.
pub(super) struct Series {
    /// Legend and tooltip text.
    pub(super) name: String,
    /// Extra CSS class of the polyline (`branch`, `total`, `reference`, …).
    pub(super) class: &'static str,
    pub(super) color: String,
    pub(super) dashed: bool,
    pub(super) points: Vec<Point>,
}

/// A line chart with the snapshot id on the x axis.
pub(super) struct LineChart {
    /// The `<svg>` element's id.
    pub(super) id: &'static str,
    pub(super) title: &'static str,
    pub(super) y_label: &'static str,
    /// Start the y axis at 0 (magnitudes) rather than at the smallest value (levels).
    pub(super) y_from_zero: bool,
    /// First and last snapshot id: every chart spans the same x range.
    pub(super) x_span: (u64, u64),
    pub(super) series: Vec<Series>,
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

    /// The x axis (snapshot ids, whole numbers) and the y axis (out to nice ticks).
    fn axes(&self) -> (Axis, Axis) {
        let x = Axis::new(
            &[self.x_span.0 as f64, self.x_span.1 as f64],
            true,
            false,
            8,
        );
        let mut ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.y))
            .collect();
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

    /// The chart as one `<svg>` element whose plot starts `left` pixels from the left edge.
    pub(super) fn svg(&self, left: f64) -> String {
        let n_points = self.points();
        let (x_axis, y_axis) = self.axes();
        let legend_entries = self.series.len().min(LEGEND_MAX);
        let legend_rows = if self.series.len() > 1 {
            legend_entries.div_ceil(LEGEND_COLUMNS) + usize::from(self.series.len() > LEGEND_MAX)
        } else {
            0
        };
        let legend_height = if legend_rows > 0 {
            LEGEND_GAP + legend_rows as f64 * LEGEND_ROW
        } else {
            0.0
        };
        let height = TOP + PLOT_HEIGHT + BOTTOM + legend_height;
        let (x0, x1) = (left, WIDTH - RIGHT);
        let (y0, y1) = (TOP + PLOT_HEIGHT, TOP);
        let px = |x: f64| x_axis.scale(x, x0, x1);
        let py = |y: f64| y_axis.scale(y, y0, y1);

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
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">snapshot id</text>",
            (x0 + x1) / 2.0,
            y0 + 36.0
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
            let coords: Vec<String> = series
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline class=\"series {}\" data-series=\"{i}\" stroke=\"{}\"{} points=\"{}\">\
                 <title>{}</title></polyline>",
                series.class,
                series.color,
                if series.dashed {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                },
                coords.join(" "),
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
        if legend_rows > 0 {
            let shown = if self.series.len() > LEGEND_MAX {
                LEGEND_MAX - 1
            } else {
                self.series.len()
            };
            let col_width = (x1 - x0) / LEGEND_COLUMNS as f64;
            let row_y = |row: usize| y0 + BOTTOM + LEGEND_GAP + row as f64 * LEGEND_ROW;
            for (i, series) in self.series.iter().take(shown).enumerate() {
                let x = x0 + (i % LEGEND_COLUMNS) as f64 * col_width;
                let y = row_y(i / LEGEND_COLUMNS);
                let _ = writeln!(
                    s,
                    "<g class=\"legend\"><line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" \
                     stroke=\"{}\" stroke-width=\"3\"{}/><text x=\"{:.1}\" y=\"{y:.1}\">{}</text></g>",
                    x + 18.0,
                    y - 4.0,
                    y - 4.0,
                    series.color,
                    if series.dashed {
                        " stroke-dasharray=\"4 3\""
                    } else {
                        ""
                    },
                    x + 24.0,
                    esc(&series.name)
                );
            }
            if shown < self.series.len() {
                let _ = writeln!(
                    s,
                    "<text class=\"legend more\" x=\"{x0}\" y=\"{:.1}\">… and {} more (hover a line \
                     for its name)</text>",
                    row_y(shown.div_ceil(LEGEND_COLUMNS)),
                    self.series.len() - shown
                );
            }
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
    ticks: Vec<(f64, String)>,
}

impl Axis {
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
        Axis { lo, hi, ticks }
    }

    /// Maps `v` from the axis range onto `from..to` (pixels).
    fn scale(&self, v: f64, from: f64, to: f64) -> f64 {
        if self.hi > self.lo {
            from + (v - self.lo) / (self.hi - self.lo) * (to - from)
        } else {
            (from + to) / 2.0
        }
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
        // Snapshot ids: whole numbers only, within the values' range.
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
