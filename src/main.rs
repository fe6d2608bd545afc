use std::process::ExitCode;

// mimalloc instead of the system allocator: in two backlog benchmark runs each, it took about 20%
// less CPU per job than glibc's malloc, at about 30% more peak RSS (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    fastly_purge_worker::cli::main()
}
