//! `cargo xtask`: set up a machine, build (kernel objects with nightly, the rest with stable),
//! test, run the demo playground and the benchmarks.
#![forbid(unsafe_code)]

mod bench;
mod build;
mod demo;
mod demo_authz;
mod demo_resilience;
mod demo_tracing;
mod demo_waypoint;
mod docs;
mod docs_check;
mod docs_reference;
mod fuzz;
mod plot;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (idempotent): nightly rust-src, bpf-linker, Debian tools.
    Setup,
    /// Build the kernel objects (nightly) and the user-space binaries (stable).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, check formatting, run clippy with warnings denied, then run every test.
    Test,
    /// Bring up the demo playground, run the tour, tear it down (`up` / `down` to keep it).
    Demo {
        #[arg(value_enum)]
        action: Option<demo::Action>,
    },
    /// Run every libFuzzer target (tests/fuzz) for `--time` seconds each from the kept seeds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Regenerate deploy/crds/ from the Rust types.
    Crds,
    /// Regenerate the book's troubleshooting reference (docs/reference/reasons.md) from the
    /// reason catalogue (agent/api/src/reasons.rs).
    DocsReference,
    /// Check the book (docs/): its links, then every chapter's `sh run` blocks in order on a
    /// fresh playground, each block's output against the `output` block shown after it.
    DocsTest {
        /// Only the chapters whose file name starts with this (`04`).
        #[arg(long)]
        chapter: Option<String>,
        /// Leave the last chapter's playground up (remove it with `cargo xtask demo down`).
        #[arg(long)]
        keep: bool,
        /// Skip set-up and the build: use the binaries already in target/debug.
        #[arg(long)]
        no_build: bool,
    },
    /// Benchmarks against a no-mesh baseline in the same run (`--quick`: a smoke run under
    /// 3 minutes); writes target/bench/report.{json,md} and PNG plots.
    Bench {
        #[arg(long)]
        quick: bool,
        /// Only this measurement, on a cluster of its own (`enroll`: the burst of 200 pod
        /// arrivals); writes target/bench/<name>.{json,md} and leaves report.* alone.
        #[arg(long, value_enum, conflicts_with = "quick")]
        only: Option<bench::Only>,
        /// CPU profiles of both agents while one scenario (latency, throughput or
        /// connections) runs on the Weft side: target/bench/profile-<scenario>.md with the top
        /// frames, and a flame graph SVG per agent.
        #[arg(long, value_name = "SCENARIO", conflicts_with = "only")]
        profile: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build::all(release).map(drop),
        Task::Test => test::run(),
        Task::Crds => {
            for folder in weft_mesh::policy::CRD_FOLDERS {
                let dir = shell::root().join(folder);
                std::fs::create_dir_all(&dir)?;
                for (file, yaml) in weft_mesh::policy::crds() {
                    std::fs::write(dir.join(file), &yaml)?;
                    println!("wrote {folder}/{file}");
                }
            }
            Ok(())
        }
        Task::DocsReference => docs_reference::write(),
        Task::DocsTest {
            chapter,
            keep,
            no_build,
        } => docs::run(&docs::Options {
            chapter,
            keep,
            no_build,
        }),
        Task::Demo { action } => demo::run(action.unwrap_or(demo::Action::Tour)),
        Task::Bench {
            quick,
            only,
            profile,
        } => match (only, profile) {
            (Some(only), _) => bench::run_only(only),
            (None, Some(scenario)) => bench::profile(&scenario, quick),
            (None, None) => bench::run(quick),
        },
        Task::Fuzz { time, target } => fuzz::run(time, target.as_deref()).map(drop),
    }
}
