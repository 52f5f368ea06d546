//! The `dtx-coordinator` binary. See [`dtx_coordinator::cli`].

fn main() -> std::process::ExitCode {
    dtx_coordinator::cli::main()
}
