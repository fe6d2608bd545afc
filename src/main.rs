use std::process::ExitCode;

// mimalloc instead of the system allocator: profiles of a backlog drain showed glibc's malloc
// and free taking about a third of the worker's CPU time, with many small allocations per job.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    fastly_purge_worker::cli::main()
}
