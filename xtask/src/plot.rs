//! The benchmark's PNG plots: latency percentiles per scenario (baseline beside Weft, log
//! scale) and throughput bars. Text uses DejaVu Sans from Debian's fonts-dejavu-core.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use weft_harness::bench::Report;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const BASELINE: RGBColor = RGBColor(150, 150, 150);
const WEFT: RGBColor = RGBColor(31, 119, 180);

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

/// One grouped bar chart: for each label, a baseline bar and a Weft bar.
struct Bars<'a> {
    title: &'a str,
    unit: &'a str,
    labels: Vec<String>,
    baseline: Vec<f64>,
    weft: Vec<f64>,
    log_scale: bool,
}

fn draw(path: &Path, bars: &Bars) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let groups = bars.labels.len();
    #[expect(clippy::cast_precision_loss, reason = "a handful of groups")]
    let width = groups as f64;
    let top = bars
        .baseline
        .iter()
        .chain(&bars.weft)
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.3;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(bars.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let labels = bars.labels.clone();
    let x_label = move |x: &f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "bar positions are small and positive"
        )]
        let index = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            labels.get(index).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    macro_rules! bar {
        ($chart:ident, $values:expr, $offset:expr, $color:expr, $floor:expr) => {
            $chart.draw_series($values.iter().enumerate().map(|(i, v)| {
                #[expect(clippy::cast_precision_loss, reason = "a handful of groups")]
                let x = i as f64;
                Rectangle::new(
                    [(x + $offset, $floor), (x + $offset + 0.35, v.max($floor))],
                    $color.filled(),
                )
            }))
        };
    }
    macro_rules! finish {
        ($chart:ident, $floor:expr) => {{
            $chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(groups * 2 + 1)
                .x_label_formatter(&x_label)
                .y_desc(bars.unit)
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            bar!($chart, bars.baseline, 0.12, BASELINE, $floor)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("no mesh")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BASELINE.filled()));
            bar!($chart, bars.weft, 0.53, WEFT, $floor)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("Weft")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], WEFT.filled()));
            $chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }};
    }
    if bars.log_scale {
        let floor = bars
            .baseline
            .iter()
            .chain(&bars.weft)
            .copied()
            .fold(f64::MAX, f64::min)
            .max(1.0)
            / 2.0;
        let mut chart = builder
            .build_cartesian_2d(0.0..width, (floor..top * 2.0).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        finish!(chart, floor);
    } else {
        let mut chart = builder
            .build_cartesian_2d(0.0..width, 0.0..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        finish!(chart, 0.0);
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Writes every plot into `out` and returns their paths.
pub fn all(report: &Report, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    for case in &report.latency {
        let name = format!(
            "latency-{}-{}-{}conns.png",
            case.placement,
            if case.near_saturation {
                "near-saturation".to_owned()
            } else {
                format!("{:.0}rps", case.rate)
            },
            case.connections
        );
        let title = format!(
            "Latency, {} at {:.0} rps over {} connections",
            case.placement, case.rate, case.connections
        );
        let (b, w) = (&case.baseline.latency_us, &case.weft.latency_us);
        let path = out.join(name);
        draw(
            &path,
            &Bars {
                title: &title,
                unit: "µs (log scale)",
                labels: ["p50", "p90", "p99", "p99.9"].map(String::from).to_vec(),
                baseline: vec![b.p50, b.p90, b.p99, b.p999],
                weft: vec![w.p50, w.p90, w.p99, w.p999],
                log_scale: true,
            },
        )?;
        written.push(path);
    }
    let path = out.join("throughput.png");
    draw(
        &path,
        &Bars {
            title: "Bulk throughput, cross-node (iperf3)",
            unit: "Gbit/s",
            labels: report
                .throughput
                .iter()
                .map(|c| format!("{} stream(s)", c.streams))
                .collect(),
            baseline: report.throughput.iter().map(|c| c.baseline_gbps).collect(),
            weft: report.throughput.iter().map(|c| c.weft_gbps).collect(),
            log_scale: false,
        },
    )?;
    written.push(path);
    let path = out.join("connections.png");
    draw(
        &path,
        &Bars {
            title: "New connections per second, one request each",
            unit: "connections/s",
            labels: vec![format!("{} workers", report.connection_rate.workers)],
            baseline: vec![report.connection_rate.baseline.per_second],
            weft: vec![report.connection_rate.weft.per_second],
            log_scale: false,
        },
    )?;
    written.push(path);
    Ok(written)
}
