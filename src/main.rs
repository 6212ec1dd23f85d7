fn main() -> std::process::ExitCode {
    tsk8s::cli::main()
}
