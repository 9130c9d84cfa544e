//! `master-cli`: see [`halite_cli`].

fn main() -> std::process::ExitCode {
    halite_cli::main()
}
