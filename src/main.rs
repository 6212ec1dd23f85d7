// mimalloc: `build` is allocation-heavy (typed Kubernetes objects, many small strings), and
// glibc's malloc spent ~30% of its instructions there; mimalloc cuts the in-process build at
// 1,000 clusters by about a quarter (see README, Speed). Only the binary sets it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tsk8s::cli::main()
}
