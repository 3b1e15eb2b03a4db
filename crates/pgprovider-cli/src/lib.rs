//! The `pgprovider` command-line tool: `demo`, `health`, `bench`, `migrate`, `listen` and
//! `notify`.
//!
//! The binary is a thin wrapper around [`main`]; every command returns an `anyhow::Result`
//! and errors are printed as one readable message, never as a panic or backtrace.
#![deny(missing_docs)]

mod cmd;
pub mod opt;

use clap::Parser;
use std::process::ExitCode;

/// A failure that carries its own exit code (1 by default; 2 for bad input).
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// Parses the command line, runs the command and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = opt::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<Exit>() {
                Some(Exit(c, _)) => *c,
                None if e.downcast_ref::<pgprovider::ConfigError>().is_some() => 2,
                None => 1,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Runs one parsed command.
///
/// # Errors
/// Whatever the command met, as one message.
pub async fn run(cli: opt::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        opt::Command::Demo(args) => cmd::demo::run(args).await,
        opt::Command::Health(args) => cmd::health::run(args).await,
        opt::Command::Serve(args) => cmd::serve::run(args).await,
        opt::Command::Bench(args) => cmd::bench::run(args).await,
        opt::Command::Migrate(args) => cmd::migrate::run(args).await,
        opt::Command::Listen(args) => cmd::listen::listen(args).await,
        opt::Command::Notify(args) => cmd::listen::notify(args).await,
        opt::Command::Drill(opt::DrillCommand::Failover(args)) => {
            cmd::drill::run(cmd::drill::Kind::Failover, args).await
        }
        opt::Command::Soak(args) => cmd::soak::run(args).await,
        opt::Command::Inspect(args) => cmd::inspect::run(args).await,
        opt::Command::Drill(opt::DrillCommand::Switchover(args)) => {
            cmd::drill::run(cmd::drill::Kind::Switchover, args).await
        }
    }
}

/// Prints to stdout; a closed pipe (`pgprovider demo | head`) ends output quietly instead
/// of panicking as `println!` does.
pub(crate) fn out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_fmt(text)
        .and_then(|()| stdout.write_all(b"\n"));
}

/// `println!` through [`out`].
macro_rules! say {
    ($($t:tt)*) => { $crate::out(format_args!($($t)*)) };
}
pub(crate) use say;

/// The drivers compiled into this binary.
pub fn registry() -> pgprovider::DriverRegistry {
    let mut r = pgprovider::DriverRegistry::new();
    r.register(pgprovider_tokio_postgres::TokioPostgres::new());
    #[cfg(feature = "sqlx")]
    r.register(pgprovider_sqlx::SqlxDriver::new());
    #[cfg(feature = "diesel")]
    r.register(pgprovider_diesel::DieselDriver::new());
    r
}
