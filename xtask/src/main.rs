//! Developer tasks for linkmesh: `cargo xtask <command>`.

mod audit;
mod bench;
mod deb;
mod demo;
mod deps;
mod ebpf;
mod fuzz;
mod step;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "linkmesh developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (nightly + rust-src, bpf-linker against the
    /// nightly's own LLVM) into target/bpf/linkmesh.bpf.o.
    BuildEbpf,
    /// Install what is missing, build, lint, and run every test (root runs the
    /// network-namespace integration tests too).
    Test(test::TestArgs),
    /// Benchmarks in the lab (as root): `mesh`, `vip`, `ebpf` or `idle`.
    Bench {
        /// Which benchmark.
        #[arg(default_value = "mesh")]
        what: String,
    },
    /// The demo lab, live (as root): etcd and hosts in network namespaces, a
    /// VXLAN mesh, a floating IP and its owner's hard crash. Ctrl-C tears it
    /// down; `--keep` leaves it up, `--down` removes it.
    Demo(demo::DemoArgs),
    /// Run the cargo-fuzz targets (fuzz/: host records, segment and VIP
    /// records, API bodies) for --seconds each (default 60), installing
    /// cargo-fuzz on the nightly; fails if any target crashes.
    Fuzz(fuzz::FuzzArgs),
    /// Build the Debian package (release binaries, the unit, the settings,
    /// completions, maintainer scripts) into target/deb/ and print its path;
    /// `--check` runs lintian and, as root, installs, removes and purges it.
    Deb(deb::DebArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = step::workspace_root()?;
    match cli.command {
        Command::BuildEbpf => ebpf::build(&root).map(|_| ()),
        Command::Test(args) => test::run(&root, &args),
        Command::Bench { what } => bench::run(&root, &what),
        Command::Demo(args) => demo::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Deb(args) => deb::run(&root, &args),
    }
}
