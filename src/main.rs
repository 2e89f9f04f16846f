//! The `awork-gateway` binary; everything lives in the library (`cli`). Its allocator is
//! mimalloc as the process's `malloc`, linked in here: see the note on the dependency in
//! Cargo.toml.

use mimalloc as _;

fn main() -> std::process::ExitCode {
    awork_gateway::cli::main()
}
