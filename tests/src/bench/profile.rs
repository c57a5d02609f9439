//! `cargo xtask bench --profile SCENARIO`: a CPU profile of each agent while one scenario runs
//! on the Weft side. perf samples the CPU clock (a VM without a PMU has no cycles event) with
//! DWARF call graphs (the release build keeps debug info; std has no frame pointers); inferno
//! folds `perf script` and draws the flame graph; the top frames by self and total time go
//! into a Markdown table beside it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;
use inferno::collapse::Collapse as _;

/// What runs while the agents are sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Open-loop requests at 1,000 rps over 4 keep-alive connections, cross-node.
    Latency,
    /// One iperf3 stream, cross-node.
    Throughput,
    /// New connections as fast as 8 workers open them, cross-node.
    Connections,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Throughput => "throughput",
            Self::Connections => "connections",
        }
    }
}

/// Samples per second. Low enough that a fully busy agent's DWARF stacks (16 KiB a sample)
/// stay near 80 MB over a 15-second run.
const FREQUENCY: &str = "299";
/// Frames shown in each table.
const TOP: usize = 25;

/// One agent being sampled.
#[derive(Debug)]
pub struct Recording {
    agent: &'static str,
    data: PathBuf,
    perf: Child,
}

/// Starts sampling `pid` for `seconds`, into `out/perf-<scenario>-<agent>.data`.
pub fn record(
    pid: u32,
    agent: &'static str,
    scenario: Scenario,
    seconds: u64,
    out: &Path,
) -> anyhow::Result<Recording> {
    let data = out.join(format!("perf-{}-{agent}.data", scenario.name()));
    let perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", FREQUENCY])
        .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting perf record (is linux-perf installed? `cargo xtask setup`)")?;
    Ok(Recording { agent, data, perf })
}

/// A recording turned into a flame graph and a table.
#[derive(Debug)]
pub struct Profile {
    pub agent: &'static str,
    pub svg: PathBuf,
    /// What the samples weigh: perf weights CPU-clock samples by their period, in ns.
    pub cpu_ns: u64,
    pub table: String,
}

impl Recording {
    /// Waits for perf to finish, folds its samples and writes
    /// `profile-<scenario>-<agent>.{folded,svg}`.
    pub fn finish(mut self, scenario: Scenario, out: &Path) -> anyhow::Result<Profile> {
        let status = self.perf.wait().context("waiting for perf record")?;
        anyhow::ensure!(status.success(), "perf record failed: {status}");
        let mut script = Command::new("perf")
            .args(["script", "--no-inline", "-i"])
            .arg(&self.data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf script")?;
        let mut folded = Vec::new();
        let stdout = script.stdout.take().context("perf script's output")?;
        inferno::collapse::perf::Folder::default()
            .collapse(BufReader::new(stdout), &mut folded)
            .context("folding perf script's output")?;
        let status = script.wait().context("waiting for perf script")?;
        anyhow::ensure!(status.success(), "perf script failed: {status}");
        let stem = format!("profile-{}-{}", scenario.name(), self.agent);
        std::fs::write(out.join(format!("{stem}.folded")), &folded)?;
        let lines: Vec<&str> = std::str::from_utf8(&folded)
            .context("folded stacks are text")?
            .lines()
            .collect();
        let svg = out.join(format!("{stem}.svg"));
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!(
            "weft-agent, {} node, {} scenario",
            self.agent,
            scenario.name()
        );
        let file = std::fs::File::create(&svg).with_context(|| format!("{}", svg.display()))?;
        inferno::flamegraph::from_lines(&mut options, lines.iter().copied(), file)
            .context("drawing the flame graph")?;
        let (cpu_ns, table) = top_frames(&lines);
        // The raw samples are large and the folded stacks hold what they say.
        let _ = std::fs::remove_file(&self.data);
        Ok(Profile {
            agent: self.agent,
            svg,
            cpu_ns,
            table,
        })
    }
}

/// The frames with the most samples of their own, with their inclusive share, as a Markdown
/// table, from folded lines (`frame;frame;frame count`).
pub fn top_frames(lines: &[&str]) -> (u64, String) {
    let mut own: HashMap<&str, u64> = HashMap::new();
    let mut total: HashMap<&str, u64> = HashMap::new();
    let mut samples = 0u64;
    for line in lines {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        samples += count;
        let frames: Vec<&str> = stack.split(';').collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_default() += count;
        }
        let mut seen: Vec<&str> = Vec::with_capacity(frames.len());
        for frame in frames {
            if !seen.contains(&frame) {
                seen.push(frame);
                *total.entry(frame).or_default() += count;
            }
        }
    }
    let mut ranked: Vec<(&str, u64)> = own.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let percent = |n: u64| {
        #[expect(clippy::cast_precision_loss, reason = "sample counts fit")]
        let share = 100.0 * n as f64 / samples.max(1) as f64;
        share
    };
    let mut table = String::from("| frame | self | total |\n|---|---:|---:|\n");
    for (frame, count) in ranked.into_iter().take(TOP) {
        let frame = frame.replace('|', "\\|");
        let _ = writeln!(
            table,
            "| `{frame}` | {:.1}% | {:.1}% |",
            percent(count),
            percent(total.get(frame.as_str()).copied().unwrap_or(count))
        );
    }
    (samples, table)
}

/// The report of one profiling run.
pub fn markdown(scenario: Scenario, commit: &str, profiles: &[Profile]) -> String {
    let mut text = format!(
        "# Weft CPU profile: {} scenario\n\n- Commit: `{commit}`\n- perf, CPU clock at {FREQUENCY} Hz, DWARF call graphs; folded and drawn with inferno.\n",
        scenario.name()
    );
    for profile in profiles {
        let _ = write!(
            text,
            "\n## Agent on the {} node: {:.2} s of CPU sampled\n\nFlame graph: `{}`\n\n{}",
            profile.agent,
            {
                #[expect(clippy::cast_precision_loss, reason = "nanosecond totals fit")]
                let seconds = profile.cpu_ns as f64 / 1e9;
                seconds
            },
            profile.svg.display(),
            profile.table
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::top_frames;

    #[test]
    fn frames_are_ranked_by_their_own_samples_and_shown_with_their_total() {
        let lines = [
            "weft-agent;main;poll;read 30",
            "weft-agent;main;poll;write 50",
            "weft-agent;main;encrypt 20",
            "weft-agent;main;poll;poll 0",
            "not a folded line",
        ];
        let (weight, table) = top_frames(&lines);
        assert_eq!(weight, 100);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows[0], "| `write` | 50.0% | 50.0% |");
        assert_eq!(rows[1], "| `read` | 30.0% | 30.0% |");
        assert_eq!(rows[2], "| `encrypt` | 20.0% | 20.0% |");
        // A recursive frame counts once per stack in its total.
        assert_eq!(rows[3], "| `poll` | 0.0% | 80.0% |");
    }
}
