//! `jit`: the jitgate operator command line (the `jitgate_cli` library does the work).

fn main() -> std::process::ExitCode {
    jitgate_cli::main()
}
