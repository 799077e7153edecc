//! The `herald` binary: parse the command line, set up logging, run the command on a
//! single-threaded runtime, and turn the outcome into an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                cli::Exit::Usage
            } else {
                cli::Exit::Ok
            };
            let _ = err.print();
            return code.into();
        }
    };
    cli::logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("herald: cannot start the async runtime: {err}");
            return cli::Exit::Failure.into();
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herald: {}", herald::report::one_line(&err));
            cli::Exit::of(&err).into()
        }
    }
}
