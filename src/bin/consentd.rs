//! `consentd`: the office daemon (`--config FILE`), plus `demo`.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "consentd",
    version,
    about = "The consentd office daemon",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The office's TOML configuration
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the product end to end on loopback with a fresh temporary network
    Demo {
        /// Leave the network running and print how to reach and stop each office
        #[arg(long)]
        keep: bool,
    },
    /// Check a configuration (keys, roster, data directory) without serving
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Measure throughput beside a baseline on this machine
    Bench {
        /// Records per benchmark
        #[arg(long, default_value_t = consentd::bench::DEFAULT_RECORDS)]
        records: usize,
        /// Print a JSON array of rows
        #[arg(long)]
        json: bool,
    },
    /// The raw redb side of the bench's memory row, run by `consentd bench` as a child process
    #[command(hide = true)]
    BenchRawRedb {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        records: usize,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            eprintln!(
                "error: {} (see consentd --help)",
                consentd::ctl::clap_error_line(&e)
            );
            std::process::exit(2);
        }
    };
    let result = match (cli.config, cli.command) {
        (Some(config), None) => serve(config),
        (None, Some(Command::Demo { keep })) => consentd::demo::run(keep),
        (None, Some(Command::CheckConfig { config })) => match consentd::daemon::prepare(&config) {
            Ok(p) => {
                p.office.store().shutdown();
                for warning in &p.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("config {} is valid for office {}", config.display(), p.config.office);
                Ok(())
            }
            // A running office holds its database: everything else was checked.
            Err(e) if e.store_in_use() => {
                for warning in consentd::daemon::config_warnings(&config) {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "config {} is valid (its data directory is in use by a running consentd: the database was not checked)",
                    config.display()
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        (None, Some(Command::Bench { records, json })) => {
            consentd::bench::run(records).map(|rows| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
                } else {
                    print!("{}", consentd::bench::human(&rows));
                }
            })
        }
        (None, Some(Command::BenchRawRedb { db, input, records })) => {
            consentd::bench::raw_redb_child(&db, &input, records)
        }
        _ => Err("give --config FILE to run an office, or a command such as `consentd demo` (see consentd --help)".into()),
    };
    if let Err(message) = result {
        eprintln!("error: {}", message.replace('\n', " "));
        std::process::exit(1);
    }
}

fn serve(config: PathBuf) -> Result<(), String> {
    // Logging starts before the config is read so start-up refusals are logged too; the config's
    // `[log] filter` applies once read, unless CONSENTD_LOG or RUST_LOG sets one.
    let log = consentd::daemon::init_tracing("info");
    let prepared = consentd::daemon::prepare(&config).map_err(|e| e.to_string())?;
    log.apply_config(&prepared.config.log.filter)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(async {
            // Handlers first (inside the runtime), then the socket: see `termination_signal`.
            let shutdown = consentd::daemon::termination_signal();
            consentd::daemon::run(prepared, shutdown).await
        })
        .map_err(|e| e.to_string())
}
