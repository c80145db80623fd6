//! The `eventhost` binary; everything lives in the library.

/// Events are many small allocations freed on other threads: mimalloc
/// handles that pattern several times faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eventhost::cli::main()
}
