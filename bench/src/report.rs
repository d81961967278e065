//! The results of a run and how they are written: the markdown table
//! (`results-YYYYMMDD-HHMMSS.md`), `results.json`, and the ratio chart (SVG drawn here,
//! converted to PNG with `rsvg-convert` when it is installed; `ratios.png` is the latest).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::json;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::adapters::AdapterKind;
use crate::goals;
use crate::metrics::{Metric, Summary};
use crate::procs;

/// What one adapter produced for one metric.
#[derive(Clone, Debug)]
pub enum Cell {
    /// One value per run.
    Values(Vec<f64>),
    /// The metric means nothing for this adapter (memory of `direct`).
    NotApplicable,
    /// The adapter did not run (a tool is missing).
    Skipped(String),
    /// The phase failed; the reason.
    Failed(String),
}

/// Where and on what the benchmark ran.
#[derive(Clone, Debug)]
pub struct Meta {
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    pub date: String,
    /// `YYYYMMDD-HHMMSS`, for file names.
    pub stamp: String,
    pub nproc: usize,
    pub cpu_model: String,
    /// `/proc/loadavg` when the run started.
    pub load: String,
    /// Tool name → first line of its version output.
    pub versions: BTreeMap<String, String>,
    /// Which meshd code was measured: the checkout's commit and the binary's build time
    /// (see `source_of`).
    pub source: String,
    pub runs: usize,
    pub seconds: u64,
    pub held_conns: usize,
    pub smoke: bool,
}

/// Everything a run measured.
pub struct Results {
    pub meta: Meta,
    pub adapters: Vec<AdapterKind>,
    pub metrics: Vec<Metric>,
    pub cells: BTreeMap<(AdapterKind, Metric), Cell>,
}

/// The ratios shown below the table and in the chart: numerator, denominator.
const RATIOS: [(AdapterKind, AdapterKind); 4] = [
    (AdapterKind::MeshdNoise, AdapterKind::Stunnel),
    (AdapterKind::MeshdNoise, AdapterKind::Direct),
    (AdapterKind::MeshdPsk, AdapterKind::Stunnel),
    (AdapterKind::MeshdTls, AdapterKind::Stunnel),
];

/// A compact number: about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Results {
    fn summary(&self, adapter: AdapterKind, metric: Metric) -> Option<Summary> {
        match self.cells.get(&(adapter, metric)) {
            Some(Cell::Values(v)) => Summary::of(v),
            _ => None,
        }
    }

    /// median(a) / median(b), when both exist and b is not zero.
    pub fn ratio(&self, metric: Metric, a: AdapterKind, b: AdapterKind) -> Option<f64> {
        let (x, y) = (self.summary(a, metric)?, self.summary(b, metric)?);
        (y.median != 0.0).then(|| x.median / y.median)
    }

    fn cell_text(&self, adapter: AdapterKind, metric: Metric) -> String {
        match self.cells.get(&(adapter, metric)) {
            Some(Cell::Values(v)) => match Summary::of(v) {
                Some(s) if v.len() == 1 => num(s.median),
                Some(s) => format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max)),
                None => "failed".into(),
            },
            Some(Cell::NotApplicable) => "—".into(),
            Some(Cell::Skipped(_)) => "skipped".into(),
            Some(Cell::Failed(_)) => "failed".into(),
            None => "not run".into(),
        }
    }

    /// One word or the skip reason, for the table's status row.
    fn status(&self, adapter: AdapterKind) -> String {
        let cells = || {
            self.metrics
                .iter()
                .filter_map(|&m| self.cells.get(&(adapter, m)))
        };
        if let Some(Cell::Skipped(reason)) = cells().find(|c| matches!(c, Cell::Skipped(_))) {
            return format!("skipped: {reason}");
        }
        let failed = cells().filter(|c| matches!(c, Cell::Failed(_))).count();
        if failed > 0 {
            format!("{failed} metric(s) failed, see below")
        } else {
            "measured".into()
        }
    }

    fn ratio_pairs(&self) -> Vec<(AdapterKind, AdapterKind)> {
        RATIOS
            .into_iter()
            .filter(|(a, b)| self.adapters.contains(a) && self.adapters.contains(b))
            .collect()
    }

    /// The markdown report; `chart` is the PNG (or SVG) file name next to it, if any.
    pub fn markdown(&self, chart: Option<&str>) -> String {
        let m = &self.meta;
        let mut s = String::new();
        let _ = writeln!(s, "# meshbench results\n");
        let _ = writeln!(s, "- date: {} UTC", m.date);
        let _ = writeln!(s, "- machine: {} CPUs, {}", m.nproc, m.cpu_model);
        let _ = writeln!(s, "- load average at start: {}", m.load);
        let _ = writeln!(s, "- meshd measured: {}", m.source);
        let _ = writeln!(
            s,
            "- settings: {} run(s) per metric, {} s per measurement, {} held connections{}",
            m.runs,
            m.seconds,
            m.held_conns,
            if m.smoke {
                " (smoke run: not a benchmark)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "- versions:");
        for (tool, v) in &m.versions {
            let _ = writeln!(s, "  - {tool}: {v}");
        }
        let _ = writeln!(
            s,
            "\nEach cell: median [min–max] over the runs. Everything on 127.0.0.1, client, \
             tunnel and target on the same cores. \"—\": not applicable (no tunnel process).\n"
        );
        let _ = write!(s, "| metric |");
        for a in &self.adapters {
            let _ = write!(s, " {a} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &self.adapters {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        let _ = write!(s, "| status |");
        for &a in &self.adapters {
            let _ = write!(s, " {} |", self.status(a));
        }
        s.push('\n');
        for &metric in &self.metrics {
            let arrow = match metric.better() {
                crate::metrics::Better::Higher => "↑",
                crate::metrics::Better::Lower => "↓",
            };
            let _ = write!(s, "| {} {arrow} |", metric.label());
            for &a in &self.adapters {
                let _ = write!(s, " {} |", self.cell_text(a, metric));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n↑ higher is better, ↓ lower is better.");

        let pairs = self.ratio_pairs();
        if !pairs.is_empty() {
            let _ = writeln!(
                s,
                "\n## Ratios (median / median)\n\nFor ↑ metrics a ratio above 1 favours meshd; \
                 for ↓ metrics (latency, memory) a ratio *below* 1 favours meshd.\n"
            );
            let _ = write!(s, "| metric | better |");
            for (a, b) in &pairs {
                let _ = write!(s, " {a} / {b} |");
            }
            let _ = write!(s, "\n|---|---|");
            for _ in &pairs {
                let _ = write!(s, "---|");
            }
            s.push('\n');
            for &metric in self.metrics.iter().filter(|m| m.charted()) {
                let _ = write!(s, "| {} | {} |", metric.label(), metric.better().words());
                for &(a, b) in &pairs {
                    let text = self
                        .ratio(metric, a, b)
                        .map(|r| format!("{}×", num(r)))
                        .unwrap_or_else(|| "—".into());
                    let _ = write!(s, " {text} |");
                }
                s.push('\n');
            }
        }
        self.targets_markdown(&mut s);
        if let Some(chart) = chart {
            let _ = writeln!(s, "\n![meshd ratios]({chart})");
        }

        let mut notes = Vec::new();
        for &a in &self.adapters {
            let mut reasons: Vec<String> = Vec::new();
            for &metric in &self.metrics {
                let why = match self.cells.get(&(a, metric)) {
                    Some(Cell::Skipped(r)) => format!("skipped — {r}"),
                    Some(Cell::Failed(r)) => format!("{} failed — {r}", metric.label()),
                    _ => continue,
                };
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
            }
            for r in reasons {
                notes.push(format!("- **{a}**: {}", r.replace('\n', " ")));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(s, "\n## Skipped and failed\n\n{}", notes.join("\n"));
        }
        s
    }

    /// The targets section: each target per meshd mode, and the rows where a mode is not
    /// ahead of every other tunnel. Nothing when the run has no stunnel or no meshd.
    fn targets_markdown(&self, s: &mut String) {
        let modes: Vec<AdapterKind> = goals::MODES
            .into_iter()
            .filter(|m| self.adapters.contains(m))
            .collect();
        if modes.is_empty() || !self.adapters.contains(&AdapterKind::Stunnel) {
            return;
        }
        let _ = writeln!(
            s,
            "\n## Targets\n\nMet when the ratio of the medians meets the bound. In brackets: \
             the lowest and highest ratio of single rounds (round i of meshd against round i \
             of stunnel and direct); a spread across the bound means this machine cannot \
             tell.\n"
        );
        let _ = write!(s, "| target |");
        for m in &modes {
            let _ = write!(s, " {m} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &modes {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        for goal in goals::GOALS
            .iter()
            .filter(|g| self.metrics.contains(&g.metric))
        {
            let _ = write!(s, "| {} |", goal.text);
            for &m in &modes {
                let text = match goal.check(self, m) {
                    Some(v) => {
                        let spread = v
                            .rounds
                            .map(|(lo, hi)| format!(" [{}–{}]", num(lo), num(hi)))
                            .unwrap_or_default();
                        let verdict = if v.met { "met" } else { "**not met**" };
                        format!("{}{spread} {verdict}", num(v.ratio))
                    }
                    None => "—".into(),
                };
                let _ = write!(s, " {text} |");
            }
            s.push('\n');
        }
        let mut behind = Vec::new();
        for &m in &modes {
            let rows: Vec<String> = goals::not_ahead(self, m)
                .into_iter()
                .map(|(metric, rival, theirs, mine)| {
                    format!(
                        "{} ({rival} {}, {m} {})",
                        metric.label(),
                        num(theirs),
                        num(mine)
                    )
                })
                .collect();
            if !rows.is_empty() {
                behind.push(format!("- **{m}** behind or tied: {}", rows.join("; ")));
            }
        }
        let rivals: Vec<String> = goals::RIVALS
            .into_iter()
            .filter(|a| self.adapters.contains(a) && !self.status(*a).starts_with("skipped"))
            .map(|a| a.to_string())
            .collect();
        if behind.is_empty() {
            let _ = writeln!(
                s,
                "\nEvery meshd mode is ahead of {} on every row.",
                rivals.join(", ")
            );
        } else {
            let _ = writeln!(
                s,
                "\nRows where a meshd mode is not ahead of every other tunnel:\n\n{}",
                behind.join("\n")
            );
        }
    }

    fn targets_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for goal in goals::GOALS.iter() {
            let mut per = serde_json::Map::new();
            for m in goals::MODES {
                if let Some(v) = goal.check(self, m) {
                    per.insert(
                        m.name().to_owned(),
                        json!({
                            "ratio": v.ratio,
                            "round_min": v.rounds.map(|r| r.0),
                            "round_max": v.rounds.map(|r| r.1),
                            "met": v.met,
                        }),
                    );
                }
            }
            if !per.is_empty() {
                out.insert(goal.key.to_owned(), serde_json::Value::Object(per));
            }
        }
        serde_json::Value::Object(out)
    }

    pub fn json(&self) -> serde_json::Value {
        let m = &self.meta;
        let mut adapters = serde_json::Map::new();
        for &a in &self.adapters {
            let mut metrics = serde_json::Map::new();
            for &metric in &self.metrics {
                let v = match self.cells.get(&(a, metric)) {
                    Some(Cell::Values(v)) => {
                        let s = Summary::of(v);
                        json!({
                            "values": v,
                            "median": s.map(|s| s.median),
                            "min": s.map(|s| s.min),
                            "max": s.map(|s| s.max),
                        })
                    }
                    Some(Cell::NotApplicable) => json!({ "not_applicable": true }),
                    Some(Cell::Skipped(r)) => json!({ "skipped": r }),
                    Some(Cell::Failed(r)) => json!({ "failed": r }),
                    None => continue,
                };
                metrics.insert(metric.key().to_owned(), v);
            }
            adapters.insert(a.name().to_owned(), serde_json::Value::Object(metrics));
        }
        let mut ratios = serde_json::Map::new();
        for (a, b) in self.ratio_pairs() {
            let mut per = serde_json::Map::new();
            for &metric in &self.metrics {
                if let Some(r) = self.ratio(metric, a, b) {
                    per.insert(metric.key().to_owned(), json!(r));
                }
            }
            ratios.insert(format!("{a}/{b}"), serde_json::Value::Object(per));
        }
        let units: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .iter()
            .map(|m| {
                (
                    m.key().to_owned(),
                    json!({ "label": m.label(), "better": m.better().words() }),
                )
            })
            .collect();
        json!({
            "date_utc": m.date,
            "machine": { "nproc": m.nproc, "cpu_model": m.cpu_model, "loadavg_at_start": m.load },
            "versions": m.versions,
            "source": m.source,
            "settings": { "runs": m.runs, "seconds": m.seconds, "held_conns": m.held_conns, "smoke": m.smoke },
            "metrics": units,
            "adapters": adapters,
            "ratios": ratios,
            "targets": self.targets_json(),
        })
    }

    /// The ratio chart as SVG: one group of horizontal bars per metric, one bar per ratio,
    /// on a log scale centred on 1 (equal). `None` when there is no ratio to draw.
    pub fn chart_svg(&self) -> Option<String> {
        let pairs = self.ratio_pairs();
        let rows: Vec<(Metric, Vec<Option<f64>>)> = self
            .metrics
            .iter()
            .filter(|m| m.charted())
            .map(|&m| (m, pairs.iter().map(|&(a, b)| self.ratio(m, a, b)).collect()))
            .filter(|(_, r): &(Metric, Vec<Option<f64>>)| r.iter().any(Option::is_some))
            .collect();
        if rows.is_empty() {
            return None;
        }
        let all: Vec<f64> = rows
            .iter()
            .flat_map(|(_, r)| r.iter().flatten().copied())
            .filter(|r| *r > 0.0)
            .collect();
        let lo = all
            .iter()
            .copied()
            .fold(1.0f64, f64::min)
            .log10()
            .floor()
            .min(-1.0);
        let hi = all
            .iter()
            .copied()
            .fold(1.0f64, f64::max)
            .log10()
            .ceil()
            .max(1.0);
        let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
        let (label_w, plot_w, bar_h, gap, top) = (330.0, 520.0, 14.0, 14.0, 70.0);
        let group_h = bar_h * pairs.len() as f64 + gap;
        let height = top + group_h * rows.len() as f64 + 40.0;
        let width = label_w + plot_w + 90.0;
        let x = |r: f64| label_w + (r.log10() - lo) / (hi - lo) * plot_w;
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="15" font-weight="bold">meshd ratios (median / median, log scale; 1 = equal)</text>"#
        );
        for (i, (a, b)) in pairs.iter().enumerate() {
            let lx = 10.0 + i as f64 * 220.0;
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="43">{a} / {b}</text>"#,
                colors[i % colors.len()],
                lx + 16.0
            );
        }
        let axis_y = top - 8.0;
        let mut decade = lo;
        while decade <= hi {
            let r = 10f64.powf(decade);
            let gx = x(r);
            let _ = writeln!(
                s,
                r##"<line x1="{gx}" y1="{axis_y}" x2="{gx}" y2="{}" stroke="{}" stroke-width="{}"/><text x="{gx}" y="{}" text-anchor="middle" fill="#555">{}×</text>"##,
                height - 30.0,
                if decade == 0.0 { "#000" } else { "#ddd" },
                if decade == 0.0 { 1.5 } else { 1.0 },
                height - 15.0,
                num(r)
            );
            decade += 1.0;
        }
        for (row, (metric, ratios)) in rows.iter().enumerate() {
            let gy = top + row as f64 * group_h;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end" font-size="10" fill="#555">{}</text>"##,
                label_w - 8.0,
                gy + bar_h * 0.9,
                esc(metric.label()),
                label_w - 8.0,
                gy + bar_h * 1.9,
                metric.better().words()
            );
            for (i, r) in ratios.iter().enumerate() {
                let Some(r) = r.filter(|r| *r > 0.0) else {
                    continue;
                };
                let y = gy + i as f64 * bar_h;
                let (x0, x1) = (x(1.0), x(r));
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{y}" width="{}" height="{}" fill="{}"/><text x="{}" y="{}" font-size="10">{}×</text>"#,
                    x0.min(x1),
                    (x1 - x0).abs().max(1.0),
                    bar_h - 2.0,
                    colors[i % colors.len()],
                    x0.max(x1) + 4.0,
                    y + bar_h - 4.0,
                    num(r)
                );
            }
        }
        s.push_str("</svg>\n");
        Some(s)
    }

    /// Writes the markdown, `results.json` and the chart into `out`; returns the markdown path.
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
        let mut chart = None;
        if let Some(svg) = self.chart_svg() {
            let svg_name = format!("ratios-{}.svg", self.meta.stamp);
            let png_name = format!("ratios-{}.png", self.meta.stamp);
            let svg_path = out.join(&svg_name);
            std::fs::write(&svg_path, svg)?;
            chart = Some(svg_name);
            if procs::on_path("rsvg-convert") {
                let dir = procs::temp_dir("rsvg")?;
                let mut cmd = Command::new("rsvg-convert");
                cmd.arg("-o").arg(out.join(&png_name)).arg(&svg_path);
                match procs::run_with_timeout(cmd, dir.path(), "rsvg", Duration::from_secs(30)) {
                    Ok(done) if done.status.success() => chart = Some(png_name),
                    Ok(done) => eprintln!("rsvg-convert failed: {}", done.stderr.trim()),
                    Err(e) => eprintln!("rsvg-convert failed: {e:#}"),
                }
            } else {
                eprintln!(
                    "rsvg-convert not found (apt-get install librsvg2-bin): chart left as SVG"
                );
            }
        }
        // Stable names for the latest run, next to the stamped ones: what READMEs link to.
        if let Some(chart) = &chart {
            let ext = if chart.ends_with(".png") {
                "png"
            } else {
                "svg"
            };
            std::fs::copy(out.join(chart), out.join(format!("ratios.{ext}")))?;
        }
        let md_path = out.join(format!("results-{}.md", self.meta.stamp));
        std::fs::write(&md_path, self.markdown(chart.as_deref()))?;
        let json = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(out.join("results.json"), json + "\n")?;
        Ok(md_path)
    }
}

/// `(YYYY-MM-DD HH:MM:SS, YYYYMMDD-HHMMSS)` in UTC.
pub fn utc_stamp(at: SystemTime) -> (String, String) {
    let at = OffsetDateTime::from(at);
    // Formatting fails only for a component the value lacks; a UTC date-time has them all.
    let date = at
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .expect("a UTC date-time has every component");
    let stamp = at
        .format(format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .expect("a UTC date-time has every component");
    (date, stamp)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn utc_dates() {
        let at = |unix| utc_stamp(UNIX_EPOCH + Duration::from_secs(unix));
        assert_eq!(at(0).0, "1970-01-01 00:00:00");
        assert_eq!(at(951_782_400).1, "20000229-000000");
        assert_eq!(at(1_700_000_000).0, "2023-11-14 22:13:20");
    }

    #[test]
    fn numbers_keep_about_three_digits() {
        assert_eq!(num(45123.4), "45123");
        assert_eq!(num(33.14), "33.1");
        assert_eq!(num(4.456), "4.46");
        assert_eq!(num(0.0234), "0.023");
    }
}
