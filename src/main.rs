//! The `awork-gateway` binary; everything lives in the library (`cli`).

fn main() -> std::process::ExitCode {
    awork_gateway::cli::main()
}
