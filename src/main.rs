use std::process::ExitCode;

fn main() -> ExitCode {
    fastly_purge_worker::cli::main()
}
