//! `master-cli`: see `halite_master::cli`.

fn main() -> std::process::ExitCode {
    halite_master::cli::main()
}
