//! The `eventhost` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    eventhost::cli::main()
}
