//! The report: every figure with its unit, its target (if the issue sets one) and PASS/MISS, the
//! curves behind the plots, the machine; written as Markdown, JSON and SVG plots.
//!
//! A figure that misses its target is printed as MISS with the reason the run attached to it;
//! nothing is dropped from the report because it looks bad.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::machine::Machine;

/// A bound a figure must stay under.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Target {
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {} {unit}", num(t)),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub section: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<Target>,
    /// "PASS", "MISS" or "" (no target).
    pub status: String,
    /// Why the figure is what it is (design choice, method); mandatory reading for a MISS.
    pub note: String,
}

/// A curve for a plot: x and y values with a name.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A plot: several curves on one pair of axes.
#[derive(Debug, Clone, Serialize)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub mode: String,
    pub settings: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    pub plots: Vec<Plot>,
    /// Items that could not be measured, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Free text per section (method, design notes), in section order.
    pub notes: Vec<(String, String)>,
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    pub fn new(machine: Machine, mode: &str) -> Report {
        Report {
            machine,
            mode: mode.into(),
            settings: Vec::new(),
            figures: Vec::new(),
            plots: Vec::new(),
            skipped: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a figure; prints it as it comes so a long run shows progress.
    pub fn add(
        &mut self,
        section: &str,
        name: &str,
        value: f64,
        unit: &str,
        target: Option<Target>,
        note: &str,
    ) {
        let status = match target {
            Some(t) if t.met(value) => "PASS",
            Some(_) => "MISS",
            None => "",
        };
        println!(
            "[{section}] {name}: {} {unit} {status}{}",
            num(value),
            target
                .map(|t| format!(" (target {})", t.text(unit)))
                .unwrap_or_default()
        );
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            target,
            status: status.into(),
            note: note.into(),
        });
    }

    pub fn skip(&mut self, section: &str, why: String) {
        println!("[{section}] not measured: {why}");
        self.skipped.push((section.into(), why));
    }

    pub fn note(&mut self, section: &str, text: &str) {
        self.notes.push((section.into(), text.into()));
    }

    pub fn setting(&mut self, k: &str, v: String) {
        self.settings.push((k.into(), v));
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# r3s benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `cargo run -p r3s-bench --release -- {}` (do not edit by hand; run it again). \
             Raw figures: [benchmarks.json](benchmarks.json).\n",
            if self.mode == "quick" { "--quick" } else { "" }
        );
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| CPU | {} ({} cores visible, {}) |",
            m.cpu_model, m.cores, m.arch
        );
        let _ = writeln!(s, "| RAM | {} MiB |", m.ram_mib);
        let _ = writeln!(s, "| Kernel | {} |", m.kernel);
        let _ = writeln!(
            s,
            "| Run | {} → {} ({} mode) |",
            m.date_start, m.date_end, self.mode
        );
        let _ = writeln!(
            s,
            "| Load average (1/5/15 min) | start {}, end {} |",
            m.load_start, m.load_end
        );
        let _ = writeln!(s, "| Commit | {} |", m.git_commit);
        for (k, v) in &self.settings {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s);
        let misses: Vec<&Figure> = self.figures.iter().filter(|f| f.status == "MISS").collect();
        let passes = self.figures.iter().filter(|f| f.status == "PASS").count();
        let _ = writeln!(s, "## Summary\n");
        let _ = writeln!(
            s,
            "{passes} figures meet their target, {} miss it{}.\n",
            misses.len(),
            if misses.is_empty() { "" } else { ":" }
        );
        for f in &misses {
            let _ = writeln!(
                s,
                "- **MISS** {} / {}: {} {} (target {}). {}",
                f.section,
                f.name,
                num(f.value),
                f.unit,
                f.target.map(|t| t.text(&f.unit)).unwrap_or_default(),
                f.note
            );
        }
        if !misses.is_empty() {
            let _ = writeln!(s);
        }
        let mut sections: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !sections.contains(&f.section.as_str()) {
                sections.push(&f.section);
            }
        }
        for (sec, _) in self.notes.iter().chain(self.skipped.iter()) {
            if !sections.contains(&sec.as_str()) {
                sections.push(sec);
            }
        }
        for sec in sections {
            let _ = writeln!(s, "## {sec}\n");
            for (_, text) in self.notes.iter().filter(|(n, _)| n == sec) {
                let _ = writeln!(s, "{text}\n");
            }
            let figs: Vec<&Figure> = self.figures.iter().filter(|f| f.section == sec).collect();
            if !figs.is_empty() {
                let _ = writeln!(
                    s,
                    "| Figure | Value | Target | | Note |\n|---|---:|---|---|---|"
                );
                for f in figs {
                    let _ = writeln!(
                        s,
                        "| {} | {} {} | {} | {} | {} |",
                        f.name,
                        num(f.value),
                        f.unit,
                        f.target.map(|t| t.text(&f.unit)).unwrap_or_default(),
                        f.status,
                        f.note.replace('|', "\\|")
                    );
                }
                let _ = writeln!(s);
            }
            for p in self.plots.iter().filter(|p| p.title.starts_with(sec)) {
                let _ = writeln!(s, "![{}]({})\n", p.title, p.file);
            }
            for (_, why) in self.skipped.iter().filter(|(n, _)| n == sec) {
                let _ = writeln!(s, "Not measured in this run: {why}\n");
            }
        }
        s
    }

    /// Writes benchmarks.md, benchmarks.json and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for p in &self.plots {
            if let Err(e) = draw(p, &dir.join(&p.file)) {
                eprintln!("plot {}: {e}", p.file);
            }
        }
        std::fs::write(dir.join("benchmarks.md"), self.markdown())?;
        std::fs::write(
            dir.join("benchmarks.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw(p: &Plot, file: &Path) -> anyhow::Result<()> {
    let pts = p.series.iter().flat_map(|s| s.points.iter());
    let (mut xmax, mut ymin, mut ymax) = (1.0f64, f64::INFINITY, 0.0f64);
    for &(x, y) in pts {
        xmax = xmax.max(x);
        if y > 0.0 {
            ymin = ymin.min(y);
        }
        ymax = ymax.max(y);
    }
    if !ymin.is_finite() {
        ymin = 0.1;
    }
    let root = SVGBackend::new(file, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_range = (0.8f64..xmax * 1.25).log_scale();
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&p.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if p.log_y {
        let mut chart =
            builder.build_cartesian_2d(x_range, (ymin / 2.0..ymax * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .draw()?;
        series(&mut chart, p)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, 0.0..ymax * 1.15)?;
        chart
            .configure_mesh()
            .x_desc(p.x_label.as_str())
            .y_desc(p.y_label.as_str())
            .draw()?;
        series(&mut chart, p)?;
    }
    root.present()?;
    Ok(())
}

fn series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    p: &Plot,
) -> anyhow::Result<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    for (i, s) in p.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|&pt| Circle::new(pt, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// p50 and p99 of a set of durations, in milliseconds.
pub fn percentiles_ms(v: &mut [std::time::Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    (at(0.50), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_target_is_reported_as_miss_with_its_note() {
        let mut r = Report::new(Machine::at_start(), "quick");
        r.add(
            "Idle",
            "rss",
            70.0,
            "MiB",
            Some(Target::AtMost(64.0)),
            "because",
        );
        r.add("Idle", "cpu", 0.5, "%", Some(Target::AtMost(1.0)), "");
        let md = r.markdown();
        assert!(
            md.contains("**MISS** Idle / rss: 70.0 MiB (target ≤ 64.0 MiB). because"),
            "{md}"
        );
        assert!(
            md.contains("1 figures meet their target, 1 miss it"),
            "{md}"
        );
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<_> = (1..=100).map(std::time::Duration::from_millis).collect();
        let (p50, p99) = percentiles_ms(&mut v);
        assert!(
            (p50 - 51.0).abs() < 1.0 && (p99 - 99.0).abs() < 1.0,
            "{p50} {p99}"
        );
    }
}
