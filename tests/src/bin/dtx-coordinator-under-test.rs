//! The coordinator's own `main`, built inside this package so that cargo builds it before
//! the black-box tests run and puts it beside them (the tests spawn it as a real process).

fn main() -> std::process::ExitCode {
    dtx_coordinator::cli::main()
}
